// SPDX-License-Identifier: Apache-2.0
// Reader for the IDX files of (Fashion-)MNIST, plain or gzip-compressed, written for untrusted input.
#pragma once

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace fashion {

/// \brief A malformed, truncated or unreadable IDX file; the message names the file and the fault.
class idx_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// \brief An IDX array of unsigned bytes (type code 0x08): dimensions and row-major data.
struct idx_array {
  std::vector<std::size_t> dims;
  std::vector<std::uint8_t> data;
};

/// \brief Parses IDX bytes (already decompressed). Only unsigned-byte arrays are accepted, the
///        only type MNIST-style datasets use. `max_elements` bounds what a header may claim.
///
/// Throws idx_error (message starting with `source`) for a bad magic number, a type other than
/// 0x08, zero or more than 4 dimensions, a size overflow or above max_elements, or a byte count
/// that differs from the header's (truncated data or trailing bytes).
inline idx_array parse_idx(const std::vector<std::uint8_t>& bytes, const std::string& source,
                           std::size_t max_elements = std::size_t{1} << 31) {
  const auto fail = [&](const std::string& what) { throw idx_error(source + ": " + what); };
  if (bytes.size() < 4) fail("too short for an IDX header (" + std::to_string(bytes.size()) + " bytes)");
  if (bytes[0] != 0 || bytes[1] != 0) fail("bad magic number (first two bytes must be zero)");
  if (bytes[2] != 0x08) {
    fail("element type code " + std::to_string(bytes[2]) + " is not 8 (unsigned byte)");
  }
  const std::size_t rank = bytes[3];
  if (rank == 0 || rank > 4) fail("dimension count " + std::to_string(rank) + " is not 1 to 4");
  const std::size_t header = 4 + 4 * rank;
  if (bytes.size() < header) fail("truncated header: needs " + std::to_string(header) + " bytes");
  idx_array out;
  std::size_t elements = 1;
  for (std::size_t k = 0; k < rank; ++k) {
    const std::uint8_t* p = bytes.data() + 4 + 4 * k;
    const std::uint64_t dim = (std::uint64_t{p[0]} << 24) | (std::uint64_t{p[1]} << 16) |
                              (std::uint64_t{p[2]} << 8) | std::uint64_t{p[3]};
    if (dim != 0 && elements > max_elements / dim) {
      fail("dimensions claim more than " + std::to_string(max_elements) + " elements");
    }
    elements *= static_cast<std::size_t>(dim);
    out.dims.push_back(static_cast<std::size_t>(dim));
  }
  const std::size_t available = bytes.size() - header;
  if (available != elements) {
    fail("header says " + std::to_string(elements) + " data bytes but the file has " +
         std::to_string(available) + (available < elements ? " (truncated)" : " (trailing bytes)"));
  }
  out.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return out;
}

/// \brief Reads a whole file, gunzipping it when it is gzip-compressed (zlib detects the format;
///        plain files pass through). Throws idx_error when it cannot be opened, is corrupt, or
///        decompresses to more than `max_bytes`.
inline std::vector<std::uint8_t> read_maybe_gzip(const std::string& path,
                                                 std::size_t max_bytes = std::size_t{1} << 31) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) throw idx_error(path + ": cannot open");
  std::vector<std::uint8_t> bytes;
  std::vector<std::uint8_t> chunk(1 << 16);
  for (;;) {
    const int got = gzread(file, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (got < 0) {
      int code = 0;
      const std::string message = gzerror(file, &code);
      gzclose(file);
      throw idx_error(path + ": corrupt compressed data (" + message + ")");
    }
    if (got == 0) break;
    if (bytes.size() + static_cast<std::size_t>(got) > max_bytes) {
      gzclose(file);
      throw idx_error(path + ": decompresses to more than " + std::to_string(max_bytes) + " bytes");
    }
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + got);
  }
  // gzread reports a truncated gzip stream only through gzerror, after a short final read.
  int code = 0;
  const char* message = gzerror(file, &code);
  if (code != Z_OK) {
    const std::string text = message;
    gzclose(file);
    throw idx_error(path + ": corrupt compressed data (" + text + ")");
  }
  if (gzclose(file) != Z_OK) throw idx_error(path + ": truncated or corrupt compressed data");
  return bytes;
}

/// \brief Reads and parses an IDX file (plain or .gz).
inline idx_array read_idx(const std::string& path) { return parse_idx(read_maybe_gzip(path), path); }

}  // namespace fashion
