// SPDX-License-Identifier: Apache-2.0
// What a sibling group's training forward keeps when backward should skip the G^T P GEMMs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "vera/adapter/context.hpp"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief Saved state of a sibling group's training forward for vera::backward(group, ctx, G...):
///        P = drop(X) A^T (n x rank) and, per sibling, Q_i = (P Λd_i) B_i^T (n x out_i).
///
/// Keeping Q_i (the memory of one more output per sibling) turns grad_b_i into an n x out_i pass
/// over G_i ⊙ Q_i instead of the out x n x rank GEMM G_i^T P, and lets grad_d_i come from the
/// n x rank product that grad_X needs anyway. A forward_context keeps only P. Reuse one per
/// group: its buffers are kept, so a steady-state step allocates nothing.
template <class T>
class sibling_context {
 public:
  /// Column-major buffer type of each kept Q_i.
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

  /// \brief `dropout_seed` makes dropout masks reproducible; each training forward is a new step.
  explicit sibling_context(std::uint64_t dropout_seed = 0) : projection_(dropout_seed) {}

  /// \brief True after a training forward has filled this context.
  bool ready() const noexcept { return projection_.ready() && filled_; }
  /// \brief Rows (tokens) of the forward that filled it.
  index rows() const noexcept { return projection_.rows(); }
  /// \brief Siblings of the forward that filled it.
  std::size_t siblings() const noexcept { return kept_.size(); }
  /// \brief P and the dropout key: also usable with the single-adapter backward of any sibling
  ///        and with vera::parameter_gradients / vera::input_gradient on the group.
  const forward_context<T>& projection() const noexcept { return projection_; }
  /// \brief Q_i = (P Λd_i) B_i^T of sibling i, rows x out_i.
  /// \throws value_error when `i` is not below siblings().
  const matrix& kept(std::size_t i) const {
    if (i >= kept_.size()) {
      throw value_error("sibling_context::kept: sibling " + std::to_string(i) + " requested, the context holds " +
                        std::to_string(kept_.size()) + " sibling" + (kept_.size() == 1 ? "" : "s"));
    }
    return kept_[i];
  }

  /// \brief Starts a training step for `siblings` siblings. Used by evaluators.
  forward_context<T>& begin_step(std::size_t siblings) {
    filled_ = false;
    if (kept_.size() != siblings) kept_.resize(siblings);
    return projection_;
  }
  /// \brief Q_i's buffer for this step, sized rows x out (no allocation when sizes repeat).
  matrix& kept_buffer(std::size_t i, index rows, index out) {
    kept_[i].resize(rows, out);
    return kept_[i];
  }
  /// \brief Marks the context complete. Used by evaluators after P and every Q_i are written.
  void finish_step() noexcept { filled_ = true; }

 private:
  forward_context<T> projection_;
  std::vector<matrix> kept_;
  bool filled_ = false;
};

}  // namespace vera
