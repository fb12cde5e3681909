// SPDX-License-Identifier: Apache-2.0
// safetensors element types, and exact conversions between float16/bfloat16 and float/double.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace vera::io {

/// \brief Element types of the safetensors format whose elements occupy whole bytes.
///
/// Every one can be passed through unchanged; f16, bf16, f32 and f64 can also be converted to
/// and from float/double.
enum class dtype {
  boolean,
  u8,
  i8,
  f8_e5m2,
  f8_e4m3,
  f8_e8m0,
  f8_e4m3fnuz,
  f8_e5m2fnuz,
  i16,
  u16,
  f16,
  bf16,
  i32,
  u32,
  f32,
  i64,
  u64,
  f64,
  c64,
};

namespace detail {

struct dtype_entry {
  dtype type;
  const char* name;
  std::size_t size;
};

inline constexpr dtype_entry dtype_table[] = {
    {dtype::boolean, "BOOL", 1},
    {dtype::u8, "U8", 1},
    {dtype::i8, "I8", 1},
    {dtype::f8_e5m2, "F8_E5M2", 1},
    {dtype::f8_e4m3, "F8_E4M3", 1},
    {dtype::f8_e8m0, "F8_E8M0", 1},
    {dtype::f8_e4m3fnuz, "F8_E4M3FNUZ", 1},
    {dtype::f8_e5m2fnuz, "F8_E5M2FNUZ", 1},
    {dtype::i16, "I16", 2},
    {dtype::u16, "U16", 2},
    {dtype::f16, "F16", 2},
    {dtype::bf16, "BF16", 2},
    {dtype::i32, "I32", 4},
    {dtype::u32, "U32", 4},
    {dtype::f32, "F32", 4},
    {dtype::i64, "I64", 8},
    {dtype::u64, "U64", 8},
    {dtype::f64, "F64", 8},
    {dtype::c64, "C64", 8},
};

// entry() indexes the table by enumerator value.
constexpr bool table_follows_enum() {
  for (std::size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; ++i) {
    if (static_cast<std::size_t>(dtype_table[i].type) != i) return false;
  }
  return true;
}
static_assert(table_follows_enum(), "dtype_table must list the dtypes in enumerator order");

inline const dtype_entry& entry(dtype type) { return dtype_table[static_cast<std::size_t>(type)]; }

}  // namespace detail

/// \brief The name safetensors uses for `type` ("F32", "BF16", ...).
inline const char* dtype_name(dtype type) { return detail::entry(type).name; }

namespace detail {

/// \brief Bytes per element.
inline std::size_t dtype_size(dtype type) { return detail::entry(type).size; }

}  // namespace detail

/// \brief The dtype named `name`, or nothing for names this reader does not know (including
///        sub-byte types such as F4, whose elements cannot be addressed one by one).
inline std::optional<dtype> parse_dtype(std::string_view name) {
  for (const auto& e : detail::dtype_table) {
    if (name == e.name) return e.type;
  }
  return std::nullopt;
}

namespace detail {

/// True for the four dtypes vera converts to and from float/double.
inline bool is_convertible(dtype type) {
  return type == dtype::f16 || type == dtype::bf16 || type == dtype::f32 || type == dtype::f64;
}

/// The bits of `from` read as a `To` of the same size (what std::bit_cast does in C++20).
template <class To, class From>
To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: the types must have the same size");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}

// double -> float rounding to nearest even, without converting an out-of-range value (undefined
// behaviour in ISO C++): magnitudes from the largest float plus half an ulp up become infinities.
inline float narrow_to_float(double value) {
  constexpr double overflow = static_cast<double>(std::numeric_limits<float>::max()) + 0x1p103;
  if (value >= overflow) return std::numeric_limits<float>::infinity();
  if (value <= -overflow) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(value);
}

// Rounds to float keeping a sticky bit in the last place (round to odd). A later rounding to a
// format with at least two fewer significand bits then rounds as if it started from the double,
// so double -> float16/bfloat16 never rounds twice.
inline float round_to_odd_float(double value) {
  float rounded = narrow_to_float(value);
  if (!std::isfinite(rounded) || static_cast<double>(rounded) == value) return rounded;
  std::uint32_t bits = bit_cast<std::uint32_t>(rounded);
  if ((bits & 1u) == 0) {
    const bool away_from_zero = std::fabs(static_cast<double>(rounded)) > std::fabs(value);
    bits = away_from_zero ? bits - 1u : bits + 1u;
  }
  return bit_cast<float>(bits);
}

/// \brief float16 bits to float (exact).
inline float half_to_float(std::uint16_t half) {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1Fu;
  const std::uint32_t mantissa = half & 0x3FFu;
  if (exponent == 0x1F) return detail::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) return detail::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in float.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign != 0 ? -magnitude : magnitude;
}

/// \brief bfloat16 bits to float (exact: the upper half of a float).
inline float bfloat16_to_float(std::uint16_t value) {
  return detail::bit_cast<float>(static_cast<std::uint32_t>(value) << 16);
}

/// \brief float to float16 bits, rounding to nearest even; overflow gives infinity, NaN stays NaN.
inline std::uint16_t float_to_half(float value) {
  const std::uint32_t bits = detail::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) {  // inf or NaN; NaN keeps a quiet bit
    return static_cast<std::uint16_t>(sign | 0x7C00u | (magnitude > 0x7F800000u ? 0x200u : 0u));
  }
  if (magnitude >= 0x477FF000u)
    return static_cast<std::uint16_t>(sign | 0x7C00u);  // rounds past 65504
  if (magnitude < 0x38800000u) {
    // Subnormal half: count units of 2^-24 from the float's significand, rounding to nearest even.
    const std::uint32_t exponent = magnitude >> 23;
    if (exponent < 102u) return sign;  // below 2^-25: rounds to zero
    const std::uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126u - exponent;  // 14..24
    std::uint32_t units = significand >> shift;
    const std::uint32_t rest = significand & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (units & 1u) != 0)) ++units;
    return static_cast<std::uint16_t>(sign | units);  // 0x400 is the smallest normal: still right
  }
  const std::uint32_t odd = (magnitude >> 13) & 1u;
  const std::uint32_t biased = magnitude - 0x38000000u + 0xFFFu + odd;  // rebias 127 -> 15, round
  return static_cast<std::uint16_t>(sign | (biased >> 13));
}

/// \brief float to bfloat16 bits, rounding to nearest even; NaN stays NaN.
inline std::uint16_t float_to_bfloat16(float value) {
  const std::uint32_t bits = detail::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  const std::uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(rounded >> 16);
}

/// \brief double to float16 bits with a single rounding (nearest even).
inline std::uint16_t double_to_half(double value) {
  return float_to_half(detail::round_to_odd_float(value));
}

/// \brief double to bfloat16 bits with a single rounding (nearest even).
inline std::uint16_t double_to_bfloat16(double value) {
  return float_to_bfloat16(detail::round_to_odd_float(value));
}

}  // namespace detail

}  // namespace vera::io
