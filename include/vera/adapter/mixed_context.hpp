// SPDX-License-Identifier: Apache-2.0
// What a mixed training forward keeps for backward: P (n x rank), each row's adapter column and,
// when the batch mixed several adapters, the n x out product whose rows grad_b sums.
#pragma once

#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "vera/core/dropout.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief Saved state between a mixed training forward and its backward, for one layer's set.
///
/// Holds P = drop(X) A^T (n x rank), the column each row's adapter occupies (-1 for base-model
/// rows and disabled adapters) and the dropout key; never the n x in input. Row i's dropout
/// probability is that of its adapter. When the batch mixed several adapters it also keeps
/// Z = (P ⊙ s_a(i) d_a(i)) B^T (n x out), which the forward computes anyway and from which
/// grad_b is a segment sum: the backward then needs one GEMM fewer, for n x out more memory.
/// The backward therefore takes lambda_d and the scales as they were in the forward; change
/// adapter values only between a backward and the next forward (as autograd requires too).
/// Reuse one context per layer: its buffers are kept.
template <class T>
class mixed_context {
 public:
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;  ///< Storage of P.

  /// \brief `dropout_seed` makes dropout masks reproducible; each training forward is a new step.
  explicit mixed_context(std::uint64_t dropout_seed = 0) { key_.seed = dropout_seed; }

  /// \brief True after a mixed training forward has filled this context.
  bool ready() const noexcept { return ready_; }
  /// \brief Rows (tokens) of the forward that filled it.
  index rows() const noexcept { return projected_.rows(); }
  /// \brief P = drop(X) A^T, rows x rank.
  const matrix& projected() const noexcept { return projected_; }
  /// \brief True when the forward kept Z = (P ⊙ s_a(i) d_a(i)) B^T (it mixed several adapters).
  bool has_products() const noexcept { return has_products_; }
  /// \brief Z = (P ⊙ s_a(i) d_a(i)) B^T, rows x out; meaningful only when has_products().
  const matrix& products() const noexcept { return products_; }
  /// \brief Per row: the set column of its adapter, or -1 when the row ran the base model only.
  const std::vector<index>& row_columns() const noexcept { return columns_; }
  /// \brief Seed and step of the last forward's mask; the probability field is unused (each row
  ///        takes its adapter's dropout).
  const dropout_key& mask_key() const noexcept { return key_; }
  /// \brief The set that filled the context (see owner_version()).
  const void* owner() const noexcept { return owner_; }
  /// \brief The owner's adapter_set::version() when the context was filled.
  std::uint64_t owner_version() const noexcept { return owner_version_; }

  /// \brief Starts a training step: sizes P and the row columns (no allocation when the sizes
  ///        repeat) and advances the dropout step. Used by evaluators.
  matrix& begin_step(index rows, index rank) {
    key_.step = next_step_++;
    key_.probability = 0.0;
    ready_ = false;
    has_products_ = false;
    projected_.resize(rows, rank);
    columns_.resize(static_cast<std::size_t>(rows));
    return projected_;
  }
  /// \brief Sizes Z for the current step and marks it kept (no allocation when the size
  ///        repeats). Used by evaluators.
  matrix& keep_products(index rows, index out) {
    products_.resize(rows, out);
    has_products_ = true;
    return products_;
  }
  /// \brief Row columns buffer of the current step. Used by evaluators.
  index* columns_buffer() noexcept { return columns_.data(); }
  /// \brief Marks the context complete for `owner` at `version`. Used by evaluators.
  void finish_step(const void* owner, std::uint64_t version) noexcept {
    owner_ = owner;
    owner_version_ = version;
    ready_ = true;
  }

 private:
  matrix projected_;
  matrix products_;
  std::vector<index> columns_;
  dropout_key key_;
  std::uint64_t next_step_ = 0;
  const void* owner_ = nullptr;
  std::uint64_t owner_version_ = 0;
  bool ready_ = false;
  bool has_products_ = false;
};

}  // namespace vera
