// SPDX-License-Identifier: Apache-2.0
// The Eigen matrix types of vera's vocabulary: how A, B and the trained vectors are stored.
#pragma once

#include <Eigen/Core>

#include "vera/core/vocabulary.hpp"

namespace vera {

/// \brief Row-major dense matrix, the layout PEFT stores A and B in.
template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// \brief Column vector used for lambda_b, lambda_d and their gradients.
template <class T>
using vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

}  // namespace vera
