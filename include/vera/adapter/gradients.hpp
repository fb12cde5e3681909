// SPDX-License-Identifier: Apache-2.0
// Gradient buffers for the two trainable vectors of one adapter.
#pragma once

#include <utility>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"

namespace vera {

/// \brief dL/d lambda_b (out) and dL/d lambda_d (rank) of one adapter.
template <class T>
struct gradients {
  vector<T> lambda_b;
  vector<T> lambda_d;

  gradients() = default;
  /// \brief Zero gradients sized for `ad`.
  explicit gradients(const adapter<T>& ad)
      : lambda_b(vector<T>::Zero(ad.out_features())), lambda_d(vector<T>::Zero(ad.rank())) {}

  /// \brief `grads = vera::parameter_gradients(...)`: evaluates in place, reusing the buffers.
  template <class Expr, class = decltype(std::declval<const Expr&>().eval_to(
                            std::declval<gradients&>()))>
  gradients& operator=(const Expr& e) {
    e.eval_to(*this);
    return *this;
  }
  gradients& operator=(const gradients&) = default;
  gradients& operator=(gradients&&) noexcept = default;
  gradients(const gradients&) = default;
  gradients(gradients&&) noexcept = default;

  void set_zero() {
    lambda_b.setZero();
    lambda_d.setZero();
  }
};

}  // namespace vera
