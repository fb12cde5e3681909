// SPDX-License-Identifier: Apache-2.0
// PEFT-compatible projection generator: reproduces torch's CPU float32 uniform_ on mt19937.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

namespace vera {

/// \brief How torch's last step `u * (to - from) + from` is rounded.
///
/// x86-64 builds of torch with AVX2 or newer evaluate it as one fused multiply-add; the scalar
/// `default` kernel rounds the product first. PEFT's own A and B therefore depend on the CPU
/// that generated them; `fused` (one FMA) matches every AVX2/AVX-512 machine, `separate`
/// (product rounded, then the sum) the scalar kernel.
enum class peft_rounding { fused, separate };

namespace detail {

// Kept out of line so no compiler can contract the product into the sum: the non-fused variant
// must round twice, exactly like torch's scalar kernel.
inline float round_product(float a, float b) {
  volatile float product = a * b;
  return product;
}

/// \brief Fills `out[0..count)` the way `torch.empty(count).uniform_(from, to, generator=gen)`
///        does on the CPU for float32, continuing the generator's stream.
inline void peft_uniform_fill(std::mt19937& engine, float from, float to, peft_rounding rounding,
                              float* out, std::size_t count) {
  const float span = to - from;
  constexpr float inv_2_24 = 1.0f / 16777216.0f;
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint32_t word = static_cast<std::uint32_t>(engine());
    const float unit = static_cast<float>(word & 0xFFFFFFu) * inv_2_24;  // exact: 24 bits
    out[i] = rounding == peft_rounding::fused ? std::fma(unit, span, from)
                                              : detail::round_product(unit, span) + from;
  }
}

/// \brief PEFT's Kaiming-uniform bound for a tensor with the given fan-in, as torch computes
///        it in double before casting to float: sqrt(3) * sqrt(2) / sqrt(fan_in).
inline float kaiming_uniform_bound(std::int64_t fan_in) {
  const double std_dev = std::sqrt(2.0) / std::sqrt(static_cast<double>(fan_in));
  return static_cast<float>(std::sqrt(3.0) * std_dev);
}

}  // namespace detail

}  // namespace vera
