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
  vector<T> lambda_b;  ///< dL/d lambda_b, out elements
  vector<T> lambda_d;  ///< dL/d lambda_d, rank elements

  /// \brief Empty buffers; the first `grads = parameter_gradients(...)` sizes them.
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
  /// \brief Copies both buffers (their sizes follow the source).
  gradients& operator=(const gradients&) = default;
  /// \brief Moves both buffers (their sizes follow the source).
  gradients& operator=(gradients&&) noexcept = default;
  /// \brief Copies both buffers.
  gradients(const gradients&) = default;
  /// \brief Moves both buffers.
  gradients(gradients&&) noexcept = default;

  /// \brief Zeroes both vectors in place, keeping their sizes (and addresses an optimizer holds).
  void set_zero() {
    lambda_b.setZero();
    lambda_d.setZero();
  }
};

}  // namespace vera
