// SPDX-License-Identifier: Apache-2.0
// The words every part of vera shares: the index type, the association order of a product, "no
// bias", and how a result reaches its destination. Standard library only, so that the device
// backend shares them; the two Eigen matrix types of the vocabulary are in vera/core/dense.hpp.
#pragma once

#include <cstddef>

namespace vera {

/// \brief Signed index type used for every extent (matches Eigen::Index).
using index = std::ptrdiff_t;

/// \brief Association order of X (W0 + Λb B Λd A)^T.
enum class order {
  automatic,  ///< let the cost model decide (default)
  low_rank,   ///< X W0^T + ((X A^T) Λd) (Λb B)^T: two thin GEMMs, never forms an out x in matrix
  merged,     ///< X (W0 + Λb B Λd A)^T: forms the adapted weight once, then one GEMM
};

/// \brief Stands for "no bias" in a forward expression.
struct no_bias_t {};
/// \brief Pass in place of the bias vector for a layer without one.
inline constexpr no_bias_t no_bias{};

/// \brief Whether an evaluation replaces the destination (`overwrite`) or adds to it
///        (`accumulate`).
enum class assign_mode { overwrite, accumulate };

}  // namespace vera
