// SPDX-License-Identifier: Apache-2.0
// Counter-based generator (Philox4x32-10): element values are pure functions of their indices.
#pragma once

#include <array>
#include <cstdint>

#include "vera/config.hpp"

namespace vera {

namespace detail {

/// \brief Philox4x32 with 10 rounds (Salmon et al., SC'11), usable on host and device.
///
/// Streams under one seed are kept apart by the counter: projection A is (col/4, row, 0, 0),
/// B is (col/4, row, 1, 0), random init of d is (k, 0, 2, 0), dropout sets the top bit of word 3.
/// The same (key, counter) gives the same four words on every backend and in any order, so a
/// kernel can regenerate any tile of a projection or a dropout mask instead of reading it.
struct philox4x32 {
  using counter_type = std::array<std::uint32_t, 4>;  ///< 128-bit counter, four words.
  using key_type = std::array<std::uint32_t, 2>;  ///< 64-bit key (the seed), low word first.

  /// \brief Four words as a plain aggregate: std::array is host-only, this works on the device.
  struct block {
    std::uint32_t word[4];  ///< counter or output words
  };

  /// \brief The ten rounds on plain words; the definition both backends share.
  VERA_HOST_DEVICE static constexpr block generate_block(block counter, std::uint32_t key0,
                                                         std::uint32_t key1) {
    for (int round = 0; round < 10; ++round) {
      if (round != 0) {
        key0 += 0x9E3779B9u;
        key1 += 0xBB67AE85u;
      }
      const std::uint64_t product0 = std::uint64_t{0xD2511F53u} * counter.word[0];
      const std::uint64_t product1 = std::uint64_t{0xCD9E8D57u} * counter.word[2];
      const auto hi0 = static_cast<std::uint32_t>(product0 >> 32);
      const auto lo0 = static_cast<std::uint32_t>(product0);
      const auto hi1 = static_cast<std::uint32_t>(product1 >> 32);
      const auto lo1 = static_cast<std::uint32_t>(product1);
      counter = block{{hi1 ^ counter.word[1] ^ key0, lo1, hi0 ^ counter.word[3] ^ key1, lo0}};
    }
    return counter;
  }

  /// \brief Four random words for `counter` under `key` (host convenience over generate_block).
  static constexpr counter_type generate(counter_type counter, key_type key) {
    const block out =
        generate_block(block{{counter[0], counter[1], counter[2], counter[3]}}, key[0], key[1]);
    return {out.word[0], out.word[1], out.word[2], out.word[3]};
  }
};

/// \brief Maps a 32-bit word to a float uniform on [-bound, bound) with a single rounding.
///
/// The top 24 bits give an exact integer s in [-2^24, 2^24); the result is s * (bound * 2^-24).
/// There is one multiply and no add, so no FMA contraction can change the bits on any compiler.
VERA_HOST_DEVICE inline float symmetric_unit_to_float(std::uint32_t word, float bound) {
  const auto top = static_cast<std::int32_t>(word >> 8);                // [0, 2^24)
  const std::int32_t centred = 2 * top - (std::int32_t{1} << 24);      // [-2^24, 2^24 - 2]
  const float scale = bound * (1.0f / 16777216.0f);                     // exact power-of-two step
  return static_cast<float>(centred) * scale;
}

/// \brief Maps a 32-bit word to a float uniform on [0, 1) (24 random bits, exact).
VERA_HOST_DEVICE inline float unit_interval_float(std::uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

/// \brief Element (row, col) of projection matrix `which` (0 = A, 1 = B) under the
///        counter-based generator, uniform on [-bound, bound).
///
/// Four consecutive columns share one Philox call, which keeps the value a pure function of the
/// indices; host fills and device kernels both call this, so their bits agree.
VERA_HOST_DEVICE inline float philox_projection_element(std::uint64_t seed, std::uint32_t which,
                                                        std::int64_t row, std::int64_t col,
                                                        float bound) {
  const philox4x32::block counter{
      {static_cast<std::uint32_t>(col / 4), static_cast<std::uint32_t>(row), which, 0u}};
  const philox4x32::block words = philox4x32::generate_block(
      counter, static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
  return symmetric_unit_to_float(words.word[col % 4], bound);
}

}  // namespace detail

}  // namespace vera
