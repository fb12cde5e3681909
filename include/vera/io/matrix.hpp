// SPDX-License-Identifier: Apache-2.0
// safetensors tensors as Eigen matrices and vectors: PyTorch's row-major layout, dtype converted.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <Eigen/Core>

#include "vera/adapter/projection.hpp"
#include "vera/io/error.hpp"
#include "vera/io/safetensors.hpp"

namespace vera::io {

/// \brief A 2-D tensor as a row-major matrix of T (float or double), shape[0] x shape[1].
///
/// safetensors stores PyTorch tensors row-major: an nn.Linear weight is out x in with each row
/// contiguous. Mapping values<T>() into a default (column-major) Eigen matrix reads it transposed,
/// which a square weight does not even reveal; this keeps the layout and converts F16, BF16, F32
/// or F64 to T (exactly, except F64 -> float). Assign the result to any Eigen matrix: Eigen copies
/// it element by element into that matrix's own layout.
/// \throws format_error naming the file and tensor when the tensor is not 2-D or its dtype does
///         not convert to floating point.
template <class T>
row_matrix<T> read_matrix(const safetensors_view& file, const tensor_info& info) {
  if (info.shape.size() != 2) {
    throw format_error(file.source() + ": tensor '" + info.name + "' has shape " +
                       shape_string(info.shape) + ", expected a 2-D matrix");
  }
  row_matrix<T> out(static_cast<index>(info.shape[0]), static_cast<index>(info.shape[1]));
  file.values_into(info, out.data());
  return out;
}

/// \brief read_matrix of the tensor called `name`.
/// \throws format_error when there is no such tensor, or as the overload above.
template <class T>
row_matrix<T> read_matrix(const safetensors_view& file, std::string_view name) {
  return read_matrix<T>(file, file.at(name));
}

/// \brief A 1-D tensor (a bias, a lambda) as a vector of T, dtype converted as read_matrix does.
/// \throws format_error naming the file and tensor when the tensor is not 1-D or its dtype does
///         not convert to floating point.
template <class T>
vector<T> read_vector(const safetensors_view& file, const tensor_info& info) {
  if (info.shape.size() != 1) {
    throw format_error(file.source() + ": tensor '" + info.name + "' has shape " +
                       shape_string(info.shape) + ", expected a 1-D vector");
  }
  vector<T> out(static_cast<index>(info.shape[0]));
  file.values_into(info, out.data());
  return out;
}

/// \brief read_vector of the tensor called `name`.
/// \throws format_error when there is no such tensor, or as the overload above.
template <class T>
vector<T> read_vector(const safetensors_view& file, std::string_view name) {
  return read_vector<T>(file, file.at(name));
}

}  // namespace vera::io
