// SPDX-License-Identifier: Apache-2.0
// Reusable scratch buffers so that a steady-state step allocates nothing.
#pragma once

#include <Eigen/Core>

#include "vera/core/shape.hpp"

namespace vera {

namespace detail {

/// The first rows x cols elements of `buffer` as a column-major matrix; the buffer grows (and
/// keeps its size) when it is smaller.
template <class S>
Eigen::Map<Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>> grown(Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>& buffer,
                                                                    index rows, index cols) {
  if (buffer.size() < rows * cols) buffer.resize(rows * cols, 1);
  return {buffer.data(), rows, cols};
}

}  // namespace detail

/// \brief Scratch memory an evaluator may use instead of allocating.
///
/// Buffers grow to the largest size requested and are kept; first touch of fresh pages is
/// expensive, so pass the same workspace to every call of a training loop. Not thread-safe:
/// one workspace per thread.
template <class T>
class workspace {
 public:
  /// Column-major buffer type of each slot.
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

  /// \brief A rows x cols scratch matrix in slot `slot` (0..3); contents are unspecified.
  Eigen::Map<matrix> get(int slot, index rows, index cols) { return detail::grown(buffers_[slot], rows, cols); }

  /// \brief A rows x cols bfloat16 scratch matrix in bfloat16 slot `slot` (0..3), apart from the
  ///        slots of get(); for the bfloat16 path's rounded copies of thin operands.
  Eigen::Map<Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, Eigen::Dynamic>> get_bfloat16(int slot, index rows,
                                                                                         index cols) {
    return detail::grown(halves_[slot], rows, cols);
  }

 private:
  matrix buffers_[4];
  Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, Eigen::Dynamic> halves_[4];
};

}  // namespace vera
