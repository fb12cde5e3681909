// SPDX-License-Identifier: Apache-2.0
// Gradient buffers of every adapter of a set: one column per adapter, as the set stores them.
#pragma once

#include <Eigen/Core>

#include "vera/adapter/adapter_set.hpp"
#include "vera/adapter/gradients.hpp"

namespace vera {

/// \brief dL/d lambda_b (out x k) and dL/d lambda_d (rank x k) of every adapter of a set.
///
/// Column c belongs to set.id_at(c), as in adapter_set::lambda_b_matrix(), so one optimizer
/// step can update every adapter at once. Adapters without rows in the batch, frozen vectors,
/// disabled adapters and free columns get zero on overwrite and are left as is on accumulate.
/// As with the core's gradients<T>, an evaluation never reallocates non-empty buffers (an
/// optimizer may hold their address): after add() gives the set a new column, evaluating into
/// buffers sized for the old k throws shape_error; size them again, e.g.
/// `grads = mixed_gradients<T>(set)`, and reset any per-column optimizer state.
/// `grads = vera::mixed_parameter_gradients(...)` evaluates in place (empty buffers are sized;
/// others must already be out x k and rank x k); set_zero() zeroes both in place, keeping their
/// sizes. Copies and moves take the source's sizes.
template <class T>
struct mixed_gradients : detail::gradient_buffers<mixed_gradients<T>> {
  /// Column-major, one column per set column.
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

  matrix lambda_b;  ///< dL/d lambda_b, out x k
  matrix lambda_d;  ///< dL/d lambda_d, rank x k

  /// \brief Empty buffers; the first `grads = mixed_parameter_gradients(...)` sizes them.
  mixed_gradients() = default;
  /// \brief Zero gradients sized for `set` (out x k and rank x k).
  explicit mixed_gradients(const adapter_set<T>& set)
      : lambda_b(matrix::Zero(set.out_features(), set.columns())),
        lambda_d(matrix::Zero(set.rank(), set.columns())) {}

  using detail::gradient_buffers<mixed_gradients<T>>::operator=;
};

}  // namespace vera
