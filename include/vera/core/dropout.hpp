// SPDX-License-Identifier: Apache-2.0
// Counter-based dropout mask: regenerated in backward from (seed, step, row, col), never stored.
#pragma once

#include <cstdint>

#include "vera/core/philox.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief Identifies one dropout mask: a training step of one adapted layer.
struct dropout_key {
  std::uint64_t seed = 0;  ///< the context's dropout seed
  std::uint64_t step = 0;  ///< training forward counter of the context (one mask per forward)
  double probability = 0.0;  ///< probability of dropping an element, in [0, 1)
};

/// \brief True when element (row, col) of the adapter input is kept under `key`.
///
/// Four consecutive columns share one Philox call; the result is a pure function of the indices.
VERA_HOST_DEVICE inline bool dropout_keeps(const dropout_key& key, index row, index col) {
  // The top bit of the last counter word marks the dropout stream: projections and random init
  // use 0 there, so a mask never repeats projection or init bits under the same seed.
  const vera::detail::philox4x32::block counter{
      {static_cast<std::uint32_t>(col / 4), static_cast<std::uint32_t>(row),
       static_cast<std::uint32_t>(key.step),
       static_cast<std::uint32_t>(key.step >> 32) | 0x80000000u}};
  const vera::detail::philox4x32::block words = vera::detail::philox4x32::generate_block(
      counter, static_cast<std::uint32_t>(key.seed), static_cast<std::uint32_t>(key.seed >> 32));
  return static_cast<double>(vera::detail::unit_interval_float(words.word[col % 4])) >= key.probability;
}

}  // namespace vera
