// SPDX-License-Identifier: Apache-2.0
// Exceptions of the file I/O layer: malformed or hostile file contents, and failing file
// operations.
#pragma once

#include <string>

#include "vera/core/error.hpp"

namespace vera {

/// \brief A file's contents are malformed, inconsistent or do not match what the caller expects.
///
/// The message names the file, the tensor or field, and the byte offsets or values involved.
class format_error : public error {
 public:
  using error::error;
};

/// \brief The operating system refused a file operation (open, read, write, rename).
class io_error : public error {
 public:
  using error::error;
};

}  // namespace vera
