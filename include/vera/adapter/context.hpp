// SPDX-License-Identifier: Apache-2.0
// What a training forward keeps for backward: P = drop(X) A^T (n x rank) and the dropout key.
#pragma once

#include <cstdint>

#include <Eigen/Core>

#include "vera/core/dropout.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief Saved state between a training forward and its backward, for one adapted layer.
///
/// Stores n x rank values, never the n x in input: grad_b and grad_d need only P, and grad_X
/// regenerates the dropout mask from the key. Reuse one context per layer across steps: its
/// buffer is kept, so a steady-state step allocates nothing.
template <class T>
class forward_context {
 public:
  /// \brief `dropout_seed` makes dropout masks reproducible; each training forward is a new step.
  explicit forward_context(std::uint64_t dropout_seed = 0) { key_.seed = dropout_seed; }

  /// \brief True after a training forward has filled this context.
  bool ready() const noexcept { return ready_; }
  /// \brief Rows (tokens) of the forward that filled it.
  index rows() const noexcept { return projected_.rows(); }
  /// \brief P = drop(X) A^T, rows x rank.
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& projected() const noexcept {
    return projected_;
  }
  /// \brief The dropout mask of the last forward (probability 0 when dropout was off).
  const dropout_key& mask_key() const noexcept { return key_; }

  /// \brief The dropout step the next training forward will use (one per forward, from 0).
  std::uint64_t next_step() const noexcept { return next_step_; }
  /// \brief Continues the dropout sequence at `step`, e.g. with next_step() saved in a
  ///        checkpoint, so that a resumed run draws the same masks as an uninterrupted one.
  void resume_at(std::uint64_t step) noexcept { next_step_ = step; }

  /// \brief Starts a training step: resizes P (no allocation when the size repeats), advances
  ///        the dropout step. Used by evaluators.
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& begin_step(index rows, index rank,
                                                               double dropout) {
    key_.step = next_step_++;
    ready_ = false;
    key_.probability = dropout;
    projected_.resize(rows, rank);
    return projected_;
  }
  /// \brief Marks the context complete. Used by evaluators after P is written.
  void finish_step() noexcept { ready_ = true; }

 private:
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> projected_;
  dropout_key key_;
  std::uint64_t next_step_ = 0;
  bool ready_ = false;
};

}  // namespace vera
