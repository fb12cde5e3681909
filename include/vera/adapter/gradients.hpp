// SPDX-License-Identifier: Apache-2.0
// Gradient buffers for the two trainable vectors of one adapter.
#pragma once

#include <utility>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"

namespace vera {

namespace detail {

/// \brief What gradients and mixed_gradients do with their lambda_b and lambda_d buffers:
///        `grads = expr` evaluates in place and set_zero() zeroes both, keeping sizes and
///        addresses. Derived is the buffer pair.
template <class Derived>
struct gradient_buffers {
  /// \brief `grads = expr`: evaluates in place, reusing the buffers.
  template <class Expr, class = decltype(std::declval<const Expr&>().eval_to(std::declval<Derived&>()))>
  Derived& operator=(const Expr& e) {
    Derived& self = static_cast<Derived&>(*this);
    e.eval_to(self);
    return self;
  }

  /// \brief Zeroes both buffers in place, keeping their sizes (and addresses an optimizer holds).
  void set_zero() {
    Derived& self = static_cast<Derived&>(*this);
    self.lambda_b.setZero();
    self.lambda_d.setZero();
  }
};

}  // namespace detail

/// \brief dL/d lambda_b (out) and dL/d lambda_d (rank) of one adapter.
///
/// `grads = vera::parameter_gradients(...)` evaluates in place, reusing the buffers (the first
/// sizes empty ones); set_zero() zeroes both in place, keeping their sizes and the addresses an
/// optimizer holds. Copies and moves take the source's sizes.
template <class T>
struct gradients : detail::gradient_buffers<gradients<T>> {
  vector<T> lambda_b;  ///< dL/d lambda_b, out elements
  vector<T> lambda_d;  ///< dL/d lambda_d, rank elements

  /// \brief Empty buffers; the first `grads = parameter_gradients(...)` sizes them.
  gradients() = default;
  /// \brief Zero gradients sized for `ad`.
  explicit gradients(const adapter<T>& ad)
      : lambda_b(vector<T>::Zero(ad.out_features())), lambda_d(vector<T>::Zero(ad.rank())) {}

  using detail::gradient_buffers<gradients<T>>::operator=;
};

}  // namespace vera
