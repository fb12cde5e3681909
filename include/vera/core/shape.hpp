// SPDX-License-Identifier: Apache-2.0
// Index type and the boundary checks that turn bad shapes into messages naming the operand.
#pragma once

#include <cstddef>
#include <string>

#include "vera/core/error.hpp"
#include "vera/core/vocabulary.hpp"

namespace vera {

namespace detail {

inline std::string dims(index rows, index cols) {
  return std::to_string(rows) + " x " + std::to_string(cols);
}

/// \brief Throws shape_error unless `operand` is exactly rows x cols.
inline void check_shape(const char* operand, index expected_rows, index expected_cols, index rows,
                        index cols) {
  if (rows != expected_rows || cols != expected_cols) {
    throw shape_error(std::string(operand) + ": expected " + detail::dims(expected_rows, expected_cols) +
                      ", got " + detail::dims(rows, cols));
  }
}

/// \brief Throws shape_error unless `operand` has exactly `expected` elements.
inline void check_size(const char* operand, index expected, index actual) {
  if (actual != expected) {
    throw shape_error(std::string(operand) + ": expected " + std::to_string(expected) +
                      " elements, got " + std::to_string(actual));
  }
}

/// \brief Throws shape_error unless `operand` has `expected` columns (`meaning` says why).
inline void check_cols(const char* operand, index expected, index actual, const char* meaning) {
  if (actual != expected) {
    throw shape_error(std::string(operand) + ": expected " + std::to_string(expected) + " columns (" +
                      meaning + "), got " + std::to_string(actual));
  }
}

/// \brief Throws shape_error unless `operand` has `expected` rows (`meaning` says why).
inline void check_rows(const char* operand, index expected, index actual, const char* meaning) {
  if (actual != expected) {
    throw shape_error(std::string(operand) + ": expected " + std::to_string(expected) + " rows (" +
                      meaning + "), got " + std::to_string(actual));
  }
}

/// \brief Throws value_error unless 0 < value (extents of a projection or a layer).
inline void check_positive(const char* what, index value) {
  if (value <= 0) {
    throw value_error(std::string(what) + ": expected a positive value, got " + std::to_string(value));
  }
}

/// \brief Throws shape_error when a layer extent exceeds what the shared projection provides.
inline void check_fits(const char* what, index needed, index available) {
  if (needed > available) {
    throw shape_error(std::string(what) + ": layer needs " + std::to_string(needed) +
                      " but the projection provides " + std::to_string(available));
  }
}

}  // namespace detail

}  // namespace vera
