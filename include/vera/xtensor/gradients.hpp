// SPDX-License-Identifier: Apache-2.0
// Where the xtensor front-end's parameter gradients go: vera::xt::gradients, 1-D views over a vera::gradients.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

#include <xtensor/xadapt.hpp>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/core/exec.hpp"
#include "vera/core/shape.hpp"

namespace vera::xt {

namespace detail {

// `size` elements at `data` as a 1-D xtensor view that owns nothing.
template <class Scalar>
auto adapt_vector(Scalar* data, index size) {
  return ::xt::adapt(std::move(data), static_cast<std::size_t>(size), ::xt::no_ownership(),
                     std::array<std::size_t, 1>{static_cast<std::size_t>(size)});
}

}  // namespace detail

/// \brief dL/d lambda_b (out) and dL/d lambda_d (rank), read and written as 1-D xtensor views.
///
/// Holds a vera::gradients<T>, so the shared evaluator writes into it directly and a reused
/// object allocates nothing. The views returned by lambda_b() and lambda_d() point into this
/// object: take them again after an overwriting evaluation into empty gradients (which sizes
/// them).
template <class T>
class gradients {
 public:
  gradients() = default;
  /// \brief Zero gradients sized for `ad`.
  explicit gradients(const adapter<T>& ad) : values_(ad) {}

  /// \brief dL/d lambda_b, out elements, writable.
  auto lambda_b() { return detail::adapt_vector(values_.lambda_b.data(), values_.lambda_b.size()); }
  /// \brief dL/d lambda_b, out elements, read-only.
  auto lambda_b() const {
    return detail::adapt_vector<const T>(values_.lambda_b.data(), values_.lambda_b.size());
  }
  /// \brief dL/d lambda_d, rank elements, writable.
  auto lambda_d() { return detail::adapt_vector(values_.lambda_d.data(), values_.lambda_d.size()); }
  /// \brief dL/d lambda_d, rank elements, read-only.
  auto lambda_d() const {
    return detail::adapt_vector<const T>(values_.lambda_d.data(), values_.lambda_d.size());
  }

  /// \brief The same values as the Eigen front-end's type (shared storage, no copy).
  vera::gradients<T>& eigen() noexcept { return values_; }
  /// \brief The same values as the Eigen front-end's type, read-only.
  const vera::gradients<T>& eigen() const noexcept { return values_; }

  /// \brief `grads = vera::xt::parameter_gradients(...)`: evaluates in place, reusing the buffers.
  template <class Expr, class = decltype(std::declval<const Expr&>().eval_to(
                            std::declval<gradients&>(), assign_mode::overwrite))>
  gradients& operator=(const Expr& e) {
    e.eval_to(*this, assign_mode::overwrite);
    return *this;
  }

  /// \brief `grads += vera::xt::parameter_gradients(...)`: accumulates without a temporary.
  template <class Expr, class = decltype(std::declval<const Expr&>().eval_to(
                            std::declval<gradients&>(), assign_mode::accumulate))>
  gradients& operator+=(const Expr& e) {
    e.eval_to(*this, assign_mode::accumulate);
    return *this;
  }

  /// \brief Zeroes both vectors in place, keeping their sizes.
  void set_zero() { values_.set_zero(); }

 private:
  vera::gradients<T> values_;
};

}  // namespace vera::xt
