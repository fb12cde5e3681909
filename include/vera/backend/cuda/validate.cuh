// SPDX-License-Identifier: Apache-2.0
// Host-side checks at the API boundary: shapes, pointers and sizes, before any device work.
#pragma once

#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "vera/core/dropout.hpp"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"
#include "vera/backend/cuda/types.cuh"

namespace vera::cuda::detail {

// cuBLAS takes int extents and strides.
inline void check_int(const char* operand, const char* what, index value) {
  if (value > INT_MAX) {
    throw value_error(std::string(operand) + ": " + what + " " + std::to_string(value) +
                      " exceeds the largest extent cuBLAS accepts (" + std::to_string(INT_MAX) + ")");
  }
}

inline void check_pointer(const char* operand, const void* pointer) {
  if (pointer == nullptr) throw value_error(std::string(operand) + ": null device pointer");
}

/// Throws unless `m` is rows x cols with a usable stride and (when not empty) a pointer.
template <class T>
void check_matrix(const char* operand, const matrix_ref<T>& m, index rows, index cols) {
  vera::detail::check_shape(operand, rows, cols, m.rows, m.cols);
  if (m.stride < m.cols || m.stride < 1) {
    throw shape_error(std::string(operand) + ": stride " + std::to_string(m.stride) +
                      " is smaller than its " + std::to_string(m.cols) + " columns");
  }
  check_int(operand, "stride", m.stride);
  check_int(operand, "rows", m.rows);
  if (m.rows != 0 && m.cols != 0) check_pointer(operand, m.data);
}

/// Throws unless the layer fits its projection and every pointer it needs is set.
template <class T>
void check_layer(const layer_ref<T>& layer) {
  const projection_ref<T>& p = layer.projection;
  vera::detail::check_positive("projection rank", p.rank);
  vera::detail::check_positive("projection max_in", p.max_in);
  vera::detail::check_positive("projection max_out", p.max_out);
  vera::detail::check_positive("layer in", layer.in);
  vera::detail::check_positive("layer out", layer.out);
  vera::detail::check_positive("layer rank", layer.rank);
  vera::detail::check_fits("layer in features", layer.in, p.max_in);
  vera::detail::check_fits("layer out features", layer.out, p.max_out);
  if (layer.rank > p.rank) {
    throw rank_error("layer rank: expected at most the projection rank " + std::to_string(p.rank) +
                     ", got " + std::to_string(layer.rank));
  }
  check_int("projection A", "max_in", p.max_in);
  check_int("projection B", "rank", p.rank);
  check_int("layer", "out", layer.out);
  check_pointer("projection A", p.a);
  check_pointer("projection B", p.b);
  check_pointer("lambda_b", layer.lambda_b);
  check_pointer("lambda_d", layer.lambda_d);
}

/// Extents of W0 as stored (out x in, or in x out with fan_in_fan_out): rows, then columns.
template <class T>
index stored_rows(const layer_ref<T>& layer) {
  return layer.fan_in_fan_out ? layer.in : layer.out;
}
template <class T>
index stored_cols(const layer_ref<T>& layer) {
  return layer.fan_in_fan_out ? layer.out : layer.in;
}

/// Base weight extents as stored: out x in, or in x out with fan_in_fan_out.
template <class T, class W>
void check_weight(const layer_ref<T>& layer, const char* operand, const matrix_ref<W>& w0) {
  check_matrix(operand, w0, stored_rows(layer), stored_cols(layer));
}

/// Null or p = 0 means no dropout; otherwise p must lie in [0, 1).
inline bool uses_dropout(const dropout_key* key) {
  if (key == nullptr) return false;
  if (!(key->probability >= 0.0 && key->probability < 1.0)) {
    throw value_error("dropout probability: expected a value in [0, 1), got " +
                      std::to_string(key->probability));
  }
  return key->probability != 0.0;
}

/// The workspace holds `needed` bytes at a 256-byte aligned address (the plans align their pieces
/// relative to it, and cudaMalloc returns such addresses).
inline void check_workspace(const char* operation, const workspace_ref& ws, std::size_t needed) {
  if (ws.bytes < needed) {
    throw value_error(std::string(operation) + " workspace: expected at least " +
                      std::to_string(needed) + " bytes, got " + std::to_string(ws.bytes));
  }
  if (needed == 0) return;
  check_pointer("workspace", ws.data);
  const auto misalignment = reinterpret_cast<std::uintptr_t>(ws.data) % 256;
  if (misalignment != 0) {
    throw value_error(std::string(operation) + " workspace: expected a 256-byte aligned address, got one " +
                      std::to_string(misalignment) + " bytes past a boundary");
  }
}

/// Bytes [begin, end) of device memory an operand covers, under the name messages use; empty
/// (begin == end) for an absent operand.
struct byte_range {
  const char* name = "";
  std::uintptr_t begin = 0;
  std::uintptr_t end = 0;
};

/// The bytes a row-major view covers: from (0, 0) to the last element of its last row.
template <class T>
byte_range range_of(const char* name, const matrix_ref<T>& m) {
  if (m.data == nullptr || m.rows == 0 || m.cols == 0) return {name, 0, 0};
  const auto begin = reinterpret_cast<std::uintptr_t>(m.data);
  const auto elements = static_cast<std::uintptr_t>((m.rows - 1) * m.stride + m.cols);
  return {name, begin, begin + elements * sizeof(std::remove_const_t<T>)};
}

/// The bytes of `count` contiguous elements at `data` (null: empty).
template <class T>
byte_range range_of(const char* name, const T* data, std::size_t count) {
  if (data == nullptr || count == 0) return {name, 0, 0};
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  return {name, begin, begin + count * sizeof(T)};
}

/// The part of the workspace an operation writes: its first `used` bytes.
inline byte_range range_of(const workspace_ref& ws, std::size_t used) {
  return range_of("workspace", static_cast<const unsigned char*>(ws.data), used);
}

/// What every operation reads from the layer: A, B (whole, as the projection holds them),
/// lambda_b and lambda_d.
template <class T>
std::array<byte_range, 4> layer_ranges(const layer_ref<T>& layer) {
  const projection_ref<T>& p = layer.projection;
  return {range_of("projection A", p.a, static_cast<std::size_t>(p.rank * p.max_in)),
          range_of("projection B", p.b, static_cast<std::size_t>(p.max_out * p.rank)),
          range_of("lambda_b", layer.lambda_b, static_cast<std::size_t>(layer.out)),
          range_of("lambda_d", layer.lambda_d, static_cast<std::size_t>(layer.rank))};
}

/// Throws aliasing_error when `written` shares a byte with any of `others`: the operations write
/// their outputs (and the workspace) while still reading their inputs.
template <class Ranges>
void check_disjoint(const char* operation, const byte_range& written, const Ranges& others) {
  if (written.begin == written.end) return;
  for (const byte_range& other : others) {
    if (other.begin < other.end && written.begin < other.end && other.begin < written.end) {
      throw aliasing_error(std::string(operation) + ": " + written.name + " overlaps " + other.name +
                           "; an output needs memory of its own");
    }
  }
}
inline void check_disjoint(const char* operation, const byte_range& written,
                           std::initializer_list<byte_range> others) {
  check_disjoint<std::initializer_list<byte_range>>(operation, written, others);
}

/// check_disjoint against `others` and against everything the layer holds.
template <class T>
void check_written(const char* operation, const layer_ref<T>& layer, const byte_range& written,
                   std::initializer_list<byte_range> others) {
  check_disjoint(operation, written, others);
  check_disjoint(operation, written, layer_ranges(layer));
}

}  // namespace vera::cuda::detail
