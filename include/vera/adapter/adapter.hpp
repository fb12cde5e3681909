// SPDX-License-Identifier: Apache-2.0
// The trainable state of one adapted linear layer: lambda_b (out) and lambda_d (rank).
#pragma once

#include <cmath>
#include <string>
#include <utility>

#include <Eigen/Core>

#include "vera/adapter/options.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/core/philox.hpp"

namespace vera {

/// \brief VeRA adapter of one linear layer with `in` inputs and `out` outputs.
///
/// Holds the shared projection (by handle), the vectors b (out) and d (rank), and the options.
/// The layer's A is projection A[:rank, :in] and its B is B[:out, :rank]. The vectors keep
/// their sizes for the adapter's lifetime: accessors return fixed-size views.
template <class T>
class adapter {
 public:
  using scalar = T;  ///< Element type, float or double.

  /// \brief Creates the adapter and initialises b and d as `options` says.
  ///
  /// A is projection A[:rank, :in_features], B is B[:out_features, :rank]; rank is options.rank,
  /// or the projection's when that is 0.
  /// \throws shape_error when in/out exceed the projection's max_in/max_out.
  /// \throws rank_error when the rank exceeds the projection's.
  /// \throws value_error for bad options (see validate(const adapter_options&)) or a
  ///         non-positive in_features, out_features or rank.
  adapter(projection<T> shared, index in_features, index out_features,
          const adapter_options& options = {})
      : projection_(std::move(shared)), options_(options) {
    validate(options_);
    in_ = in_features;
    out_ = out_features;
    rank_ = options_.rank == 0 ? projection_.rank() : options_.rank;
    // Slicing validates in/out/rank against the projection before anything is allocated.
    (void)projection_.a(in_, rank_);
    (void)projection_.b(out_, rank_);
    lambda_b_.resize(out_);
    lambda_d_.resize(rank_);
    initialise();
  }

  /// \brief Input features of the layer (columns of X).
  index in_features() const noexcept { return in_; }
  /// \brief Output features of the layer (length of lambda_b).
  index out_features() const noexcept { return out_; }
  /// \brief This layer's rank r (length of lambda_d; at most the projection's rank).
  index rank() const noexcept { return rank_; }
  /// \brief The options the adapter was created with (rank resolved separately, see rank()).
  const adapter_options& options() const noexcept { return options_; }
  /// \brief Handle of the shared projection this adapter slices A and B from.
  const projection<T>& shared_projection() const noexcept { return projection_; }

  /// \brief This layer's A: rank x in (a view into the shared projection).
  typename projection<T>::a_block a() const { return projection_.a(in_, rank_); }
  /// \brief This layer's B: out x rank (a view into the shared projection).
  typename projection<T>::b_block b() const { return projection_.b(out_, rank_); }

  /// \brief lambda_b, out elements. Writable; its size is fixed.
  Eigen::Map<vector<T>> lambda_b() noexcept { return {lambda_b_.data(), out_}; }
  /// \brief lambda_b, out elements, read-only.
  Eigen::Map<const vector<T>> lambda_b() const noexcept { return {lambda_b_.data(), out_}; }
  /// \brief lambda_d, rank elements. Writable; its size is fixed.
  Eigen::Map<vector<T>> lambda_d() noexcept { return {lambda_d_.data(), rank_}; }
  /// \brief lambda_d, rank elements, read-only.
  Eigen::Map<const vector<T>> lambda_d() const noexcept { return {lambda_d_.data(), rank_}; }

  /// \brief Replaces both vectors after checking sizes and finiteness; on error nothing changes.
  /// \param b out elements (any dense Eigen vector, converted to T).
  /// \param d rank elements.
  /// \throws shape_error when a size differs; value_error when an element is NaN or infinite.
  template <class DB, class DD>
  void set_lambdas(const Eigen::MatrixBase<DB>& b, const Eigen::MatrixBase<DD>& d) {
    vera::detail::check_size("lambda_b", out_, b.size());
    vera::detail::check_size("lambda_d", rank_, d.size());
    require_finite("lambda_b", b);
    require_finite("lambda_d", d);
    lambda_b_ = b.template cast<T>();
    lambda_d_ = d.template cast<T>();
  }

  /// \brief Number of trained scalars: out (if b trains) + rank (if d trains).
  index trainable_parameters() const noexcept {
    return (options_.train_b ? out_ : 0) + (options_.train_d ? rank_ : 0);
  }

 private:
  template <class D>
  static void require_finite(const char* name, const Eigen::MatrixBase<D>& v) {
    for (index i = 0; i < v.size(); ++i) {
      if (!std::isfinite(static_cast<double>(v(i)))) {
        throw value_error(std::string(name) + ": element " + std::to_string(i) + " is not finite");
      }
    }
  }

  void initialise() {
    if (options_.init == init_kind::constant) {
      lambda_b_.setConstant(static_cast<T>(options_.b_initial));
      lambda_d_.setConstant(static_cast<T>(options_.d_initial));
      return;
    }
    lambda_b_.setOnes();
    // Box-Muller on counter-based uniforms: reproducible on every platform, unlike
    // std::normal_distribution whose algorithm is implementation-defined.
    const vera::detail::philox4x32::key_type key{static_cast<std::uint32_t>(options_.init_seed),
                                   static_cast<std::uint32_t>(options_.init_seed >> 32)};
    for (index k = 0; k < rank_; ++k) {
      const auto words = vera::detail::philox4x32::generate({static_cast<std::uint32_t>(k), 0u, 2u, 0u}, key);
      const double u1 = (static_cast<double>(words[0]) + 1.0) / 4294967296.0;  // (0, 1]
      const double u2 = static_cast<double>(words[1]) / 4294967296.0;
      const double two_pi = 6.283185307179586;
      lambda_d_(k) = static_cast<T>(std::sqrt(-2.0 * std::log(u1)) * std::cos(two_pi * u2));
    }
  }

  projection<T> projection_;
  adapter_options options_;
  index in_ = 0;
  index out_ = 0;
  index rank_ = 0;
  vector<T> lambda_b_;
  vector<T> lambda_d_;
};

}  // namespace vera
