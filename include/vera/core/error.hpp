// SPDX-License-Identifier: Apache-2.0
// Exception hierarchy: every failure at the public API is a vera::error naming what went wrong.
#pragma once

#include <stdexcept>
#include <string>

namespace vera {

/// \brief Base of every exception the library throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// \brief An operand has the wrong number of rows/columns/elements.
class shape_error : public error {
 public:
  using error::error;
};

/// \brief A rank (r) does not match the projection or another operand.
class rank_error : public shape_error {
 public:
  using shape_error::shape_error;
};

/// \brief A value is out of range or not finite (NaN/Inf) where a finite value is required.
class value_error : public error {
 public:
  using error::error;
};

/// \brief The destination of an evaluation overlaps one of its operands.
class aliasing_error : public error {
 public:
  using error::error;
};

/// \brief An operation is not valid in the object's current state (e.g. merging twice).
class state_error : public error {
 public:
  using error::error;
};

}  // namespace vera
