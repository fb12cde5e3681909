// SPDX-License-Identifier: Apache-2.0
// A fused buffer over many gradient buffers, so that one collective call reduces all of them.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"
#include "vera/optim/parameters.hpp"

namespace vera::distributed {

/// \brief Registered gradient buffers plus one contiguous buffer holding all of them.
///
/// Registration allocates; pack()/unpack() do not, so a training step stays allocation-free. The
/// bucket keeps raw pointers: registered buffers must outlive it and must not be resized.
template <class T>
class gradient_bucket {
 public:
  /// \brief One registered gradient buffer.
  struct entry {
    std::string name;  ///< unique within the bucket
    T* data;           ///< `size` contiguous values, read by pack() and written by unpack()
    index size;        ///< number of elements
  };

  /// \brief Registers a writable contiguous Eigen buffer (vector, matrix, Map, whole columns).
  ///        Throws shape_error for a strided view, value_error for an empty or repeated name.
  template <class GD>
  void add(std::string name, Eigen::DenseBase<GD>& gradient) {
    add_buffer(std::move(name), gradient.derived());
  }
  /// \brief As above for a writable temporary view.
  template <class GD>
  void add(std::string name, Eigen::DenseBase<GD>&& gradient) {
    add_buffer(std::move(name), gradient.derived());
  }
  /// \brief Registers the gradients of the vectors `ad` trains, as "<name>.lambda_b" and
  ///        "<name>.lambda_d" (the names optimizers use for the same adapter).
  /// \throws shape_error when `grads` is not sized for `ad` (out, rank); value_error for an empty
  ///         or repeated name. On error nothing is registered.
  void add(const std::string& name, const adapter<T>& ad, gradients<T>& grads) {
    vera::detail::check_size(("'" + name + "' gradients lambda_b").c_str(), ad.out_features(), grads.lambda_b.size());
    vera::detail::check_size(("'" + name + "' gradients lambda_d").c_str(), ad.rank(), grads.lambda_d.size());
    // Both names are checked before either is registered, so an error leaves no half adapter.
    if (ad.options().train_b) check_buffer(name + ".lambda_b", grads.lambda_b);
    if (ad.options().train_d) check_buffer(name + ".lambda_d", grads.lambda_d);
    if (ad.options().train_b) register_buffer(name + ".lambda_b", grads.lambda_b);
    if (ad.options().train_d) register_buffer(name + ".lambda_d", grads.lambda_d);
  }

  /// \brief The registered buffers, in registration (and packing) order.
  const std::vector<entry>& entries() const noexcept { return entries_; }
  /// \brief Scalars in the fused buffer.
  index size() const noexcept { return static_cast<index>(fused_.size()); }
  /// \brief Bytes one reduction moves into and out of the fused buffer.
  std::size_t bytes() const noexcept { return fused_.size() * sizeof(T); }
  /// \brief The fused buffer, size() elements: what a collective reduces.
  T* data() noexcept { return fused_.data(); }
  /// \brief The fused buffer, read-only.
  const T* data() const noexcept { return fused_.data(); }

  /// \brief Copies every registered buffer into the fused buffer, in registration order.
  void pack() {
    T* out = fused_.data();
    for (const entry& e : entries_) {
      std::copy(e.data, e.data + e.size, out);
      out += e.size;
    }
  }
  /// \brief Copies the fused buffer back, multiplied by `scale` (1 / ranks for a mean).
  void unpack(T scale) {
    const T* in = fused_.data();
    for (const entry& e : entries_) {
      for (index i = 0; i < e.size; ++i) e.data[i] = in[i] * scale;
      in += e.size;
    }
  }

  /// \brief FNV-1a hash of names and sizes in order: equal on every replica that registered the
  ///        same buffers the same way, which a collective over the fused buffer relies on.
  std::uint64_t layout_hash() const {
    std::uint64_t h = 1469598103934665603ull;
    const auto mix = [&h](const void* bytes, std::size_t n) {
      const auto* p = static_cast<const unsigned char*>(bytes);
      for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
    };
    for (const entry& e : entries_) {
      mix(e.name.data(), e.name.size());
      const std::int64_t size = e.size;
      mix(&size, sizeof size);
    }
    const std::uint64_t width = sizeof(T);
    mix(&width, sizeof width);
    return h;
  }

 private:
  template <class GD>
  void add_buffer(std::string name, GD& gradient) {
    check_buffer(name, gradient);
    register_buffer(std::move(name), gradient);
  }

  template <class GD>
  void check_buffer(const std::string& name, const GD& gradient) const {
    static_assert(std::is_same_v<typename GD::Scalar, T>,
                  "vera::distributed: the gradient must have the bucket's scalar type");
    static_assert(optim::detail::direct_access_v<GD>,
                  "vera::distributed: the gradient must be a stored buffer, not an expression");
    if (name.empty()) throw value_error("vera::distributed: a gradient has an empty name");
    for (const entry& e : entries_) {
      if (e.name == name) throw value_error("vera::distributed: gradient '" + name + "' is registered twice");
    }
    if (!optim::detail::contiguous(gradient)) {
      throw shape_error("vera::distributed: gradient '" + name +
                        "' must be a contiguous buffer (no strided views)");
    }
  }

  template <class GD>
  void register_buffer(std::string name, GD& gradient) {
    entries_.push_back({std::move(name), gradient.data(), gradient.size()});
    fused_.resize(fused_.size() + static_cast<std::size_t>(gradient.size()));
  }

  std::vector<entry> entries_;
  std::vector<T> fused_;
};

}  // namespace vera::distributed
