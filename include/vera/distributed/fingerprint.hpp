// SPDX-License-Identifier: Apache-2.0
// What identifies a projection across processes: its spec and a hash of its contents.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "vera/adapter/projection.hpp"
#include "vera/core/projection_spec.hpp"

namespace vera::distributed {

/// \brief Spec fields and a content hash of a projection, as plain integers so that they can be
///        exchanged with any communication library.
struct projection_fingerprint {
  std::uint64_t seed = 0;  ///< projection_spec::seed
  std::uint64_t generator = 0;  ///< projection_spec::kind as an integer
  std::uint64_t rounding = 0;  ///< projection_spec::rounding (0 unless generator::peft)
  std::uint64_t rank = 0;  ///< projection rank
  std::uint64_t max_in = 0;  ///< columns of A
  std::uint64_t max_out = 0;  ///< rows of B
  std::uint64_t scalar_bytes = 0;  ///< sizeof(T) of the projection
  std::uint64_t content = 0;  ///< FNV-1a over the bytes of A, then B

  static constexpr int fields = 8;  ///< number of words in words()
  using words_type = std::array<std::uint64_t, fields>;  ///< The fields as one array, for exchange.

  /// \brief The fields in declaration order.
  words_type words() const noexcept {
    return {seed, generator, rounding, rank, max_in, max_out, scalar_bytes, content};
  }
  /// \brief Inverse of words(): `w` points to `fields` words.
  static projection_fingerprint from_words(const std::uint64_t* w) noexcept {
    return {w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]};
  }
};

/// \brief The fingerprint of `p`. Hashes every element: O(rank x (max_in + max_out)), done once
///        at start-up.
template <class T>
projection_fingerprint fingerprint(const projection<T>& p) {
  const projection_spec& s = p.spec();
  projection_fingerprint f;
  f.seed = s.seed;
  f.generator = static_cast<std::uint64_t>(s.kind);
  // Rounding only matters to the PEFT generator; elsewhere it must not cause a mismatch.
  f.rounding = s.kind == generator::peft ? static_cast<std::uint64_t>(s.rounding) : 0;
  f.rank = static_cast<std::uint64_t>(s.rank);
  f.max_in = static_cast<std::uint64_t>(s.max_in);
  f.max_out = static_cast<std::uint64_t>(s.max_out);
  f.scalar_bytes = sizeof(T);
  std::uint64_t h = 1469598103934665603ull;
  const auto mix = [&h](const T* values, index n) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(values);
    for (std::size_t i = 0; i < static_cast<std::size_t>(n) * sizeof(T); ++i) {
      h = (h ^ bytes[i]) * 1099511628211ull;
    }
  };
  mix(p.a().data(), p.a().size());
  mix(p.b().data(), p.b().size());
  f.content = h;
  return f;
}

/// \brief "" when equal, else the first differing field as "seed 3 (here) vs 0".
inline std::string describe_difference(const projection_fingerprint& mine,
                                       const projection_fingerprint& reference) {
  static const char* const names[projection_fingerprint::fields] = {
      "seed", "generator", "rounding", "rank", "max_in", "max_out", "scalar size in bytes",
      "content hash (same spec, different matrices)"};
  const auto a = mine.words();
  const auto b = reference.words();
  for (std::size_t k = 0; k < a.size(); ++k) {
    if (a[k] != b[k]) {
      return std::string(names[k]) + " " + std::to_string(a[k]) + " vs " + std::to_string(b[k]);
    }
  }
  return {};
}

}  // namespace vera::distributed
