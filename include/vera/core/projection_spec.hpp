// SPDX-License-Identifier: Apache-2.0
// What identifies a shared random projection (seed, rank, extents, generator) and how to fill it.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "vera/core/peft_uniform.hpp"
#include "vera/core/philox.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief Which generator turns the seed into A and B.
enum class generator {
  peft,    ///< torch mt19937 stream, bit-exact with PEFT's `projection_prng_key`
  philox,  ///< counter-based: element (i, j) depends only on (seed, matrix, i, j)
};

/// \brief Identifies the projection pair A (rank x max_in) and B (max_out x rank).
///
/// Two specs that compare equal produce bit-identical matrices on every backend.
struct projection_spec {
  std::uint64_t seed = 0;  ///< PEFT's `projection_prng_key` (only its low 32 bits seed mt19937)
  index rank = 0;  ///< rows of A, columns of B
  index max_in = 0;  ///< columns of A: the largest in_features of any adapted layer
  index max_out = 0;  ///< rows of B: the largest out_features of any adapted layer
  generator kind = generator::peft;  ///< which generator fills A and B
  peft_rounding rounding = peft_rounding::fused;  ///< only used by generator::peft

  friend bool operator==(const projection_spec& a, const projection_spec& b) {
    return a.seed == b.seed && a.rank == b.rank && a.max_in == b.max_in && a.max_out == b.max_out &&
           a.kind == b.kind && (a.kind != generator::peft || a.rounding == b.rounding);
  }
  friend bool operator!=(const projection_spec& a, const projection_spec& b) { return !(a == b); }
};

/// \brief Checks that rank, max_in and max_out are positive and small enough to address in
///        memory.
/// \throws value_error naming the extent otherwise.
inline void validate(const projection_spec& spec) {
  vera::detail::check_positive("projection rank", spec.rank);
  vera::detail::check_positive("projection max_in", spec.max_in);
  vera::detail::check_positive("projection max_out", spec.max_out);
  constexpr index limit = index{1} << 40;  // elements; far beyond any real model, avoids overflow
  if (spec.rank > limit / spec.max_in || spec.rank > limit / spec.max_out) {
    throw value_error("projection: rank x max_in or max_out x rank is too large to allocate (rank " +
                      std::to_string(spec.rank) + ", max_in " + std::to_string(spec.max_in) +
                      ", max_out " + std::to_string(spec.max_out) + ")");
  }
}

namespace detail {

// Element (row, col) of matrix `which` (0 = A, 1 = B); shared with the device kernels.
inline float philox_element(std::uint64_t seed, std::uint32_t which, index row, index col,
                            float bound) {
  return vera::detail::philox_projection_element(seed, which, row, col, bound);
}

inline void philox_fill(std::uint64_t seed, std::uint32_t which, index rows, index cols,
                        float bound, float* out) {
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < cols; ++j) {
      out[i * cols + j] = philox_element(seed, which, i, j, bound);
    }
  }
}

}  // namespace detail

/// \brief Fills A (rank x max_in) and B (max_out x rank), both row-major float32, as the spec says.
///
/// Kaiming-uniform bounds as in PEFT: sqrt(6 / max_in) for A and sqrt(6 / rank) for B.
/// The buffers must hold rank * max_in and max_out * rank floats.
/// \throws value_error for a bad spec (see validate(const projection_spec&)).
inline void generate_projection(const projection_spec& spec, float* a_row_major,
                                float* b_row_major) {
  validate(spec);
  const float bound_a = vera::detail::kaiming_uniform_bound(spec.max_in);
  const float bound_b = vera::detail::kaiming_uniform_bound(spec.rank);
  const auto count_a = static_cast<std::size_t>(spec.rank * spec.max_in);
  const auto count_b = static_cast<std::size_t>(spec.max_out * spec.rank);
  if (spec.kind == generator::peft) {
    // torch.Generator.manual_seed keeps the low 32 bits for mt19937; A then B from one stream.
    std::mt19937 engine(static_cast<std::uint32_t>(spec.seed));
    vera::detail::peft_uniform_fill(engine, -bound_a, bound_a, spec.rounding, a_row_major, count_a);
    vera::detail::peft_uniform_fill(engine, -bound_b, bound_b, spec.rounding, b_row_major, count_b);
  } else {
    detail::philox_fill(spec.seed, 0u, spec.rank, spec.max_in, bound_a, a_row_major);
    detail::philox_fill(spec.seed, 1u, spec.max_out, spec.rank, bound_b, b_row_major);
  }
}

}  // namespace vera
