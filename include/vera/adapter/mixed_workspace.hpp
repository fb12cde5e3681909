// SPDX-License-Identifier: Apache-2.0
// Reusable scratch buffers of mixed-batch evaluators, so a steady-state step allocates nothing.
#pragma once

#include <optional>
#include <vector>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief Scratch memory for mixed forward and backward evaluations.
///
/// Buffers grow to the largest size requested and are kept. Not thread-safe: one per thread.
template <class T>
class mixed_workspace {
 public:
  /// Column-major buffer type of each matrix slot.
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  static constexpr int matrix_slots = 8;  ///< number of matrix slots of get()
  static constexpr int row_slots = 3;  ///< of each per-row buffer kind

  /// \brief A rows x cols scratch matrix in slot `slot` (0..7); contents are unspecified.
  Eigen::Map<matrix> get(int slot, index rows, index cols) { return detail::grown(matrices_[slot], rows, cols); }
  /// \brief A rows x cols bfloat16 scratch matrix: bfloat16 slot `slot` (0..3) of single(), which
  ///        the bfloat16 path's rounded copies of thin operands share.
  Eigen::Map<Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, Eigen::Dynamic>> get_bfloat16(int slot, index rows,
                                                                                         index cols) {
    return single_.get_bfloat16(slot, rows, cols);
  }
  /// \brief `count` indices in slot `slot` (0..2); contents are unspecified.
  index* indices(int slot, index count) { return grow(indices_[slot], count); }
  /// \brief `count` read pointers in slot `slot` (0..2); contents are unspecified.
  const T** pointers(int slot, index count) { return grow(pointers_[slot], count); }

  /// \brief Scratch of the single-adapter evaluators, for the batches that run their algorithm
  ///        (bfloat16 storage, every row on one adapter).
  workspace<T>& single() noexcept { return single_; }
  /// \brief Room for one adapter of a set as a standalone vera::adapter, which those evaluators
  ///        read; kept between calls so that a steady state allocates nothing. Used by evaluators.
  std::optional<adapter<T>>& standalone() noexcept { return standalone_; }

 private:
  template <class P>
  static P* grow(std::vector<P>& buffer, index rows) {
    if (buffer.size() < static_cast<std::size_t>(rows)) buffer.resize(static_cast<std::size_t>(rows));
    return buffer.data();
  }

  matrix matrices_[matrix_slots];
  std::vector<index> indices_[row_slots];
  std::vector<const T*> pointers_[row_slots];
  workspace<T> single_;
  std::optional<adapter<T>> standalone_;
};

}  // namespace vera
