// SPDX-License-Identifier: Apache-2.0
// Counter-based generator (Philox4x32-10): element values are pure functions of their indices.
#pragma once

#include <array>
#include <cstdint>

namespace vera {

/// \brief Philox4x32 with 10 rounds (Salmon et al., SC'11), usable on host and device.
///
/// Streams under one seed are kept apart by the counter: projection A is (col/4, row, 0, 0),
/// B is (col/4, row, 1, 0), random init of d is (k, 0, 2, 0), dropout sets the top bit of word 3.
/// The same (key, counter) gives the same four words on every backend and in any order, so a
/// kernel can regenerate any tile of a projection or a dropout mask instead of reading it.
struct philox4x32 {
  using counter_type = std::array<std::uint32_t, 4>;
  using key_type = std::array<std::uint32_t, 2>;

  static constexpr counter_type generate(counter_type counter, key_type key) {
    for (int round = 0; round < 10; ++round) {
      if (round != 0) {
        key[0] += 0x9E3779B9u;
        key[1] += 0xBB67AE85u;
      }
      const std::uint64_t product0 = std::uint64_t{0xD2511F53u} * counter[0];
      const std::uint64_t product1 = std::uint64_t{0xCD9E8D57u} * counter[2];
      const auto hi0 = static_cast<std::uint32_t>(product0 >> 32);
      const auto lo0 = static_cast<std::uint32_t>(product0);
      const auto hi1 = static_cast<std::uint32_t>(product1 >> 32);
      const auto lo1 = static_cast<std::uint32_t>(product1);
      counter = {hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0};
    }
    return counter;
  }
};

/// \brief Maps a 32-bit word to a float uniform on [-bound, bound) with a single rounding.
///
/// The top 24 bits give an exact integer s in [-2^24, 2^24); the result is s * (bound * 2^-24).
/// There is one multiply and no add, so no FMA contraction can change the bits on any compiler.
inline float symmetric_unit_to_float(std::uint32_t word, float bound) {
  const auto top = static_cast<std::int32_t>(word >> 8);                // [0, 2^24)
  const std::int32_t centred = 2 * top - (std::int32_t{1} << 24);      // [-2^24, 2^24 - 2]
  const float scale = bound * (1.0f / 16777216.0f);                     // exact power-of-two step
  return static_cast<float>(centred) * scale;
}

/// \brief Maps a 32-bit word to a float uniform on [0, 1) (24 random bits, exact).
inline float unit_interval_float(std::uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

}  // namespace vera
