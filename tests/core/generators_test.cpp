// SPDX-License-Identifier: Apache-2.0
// Tests of the projection generators: PEFT's mt19937 stream bit for bit, and Philox4x32-10.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <vera/core/peft_uniform.hpp>
#include <vera/core/philox.hpp>
#include <vera/core/projection_spec.hpp>

namespace {

std::uint32_t bits_of(float value) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

struct generated {
  std::vector<float> a;  // rank x max_in, row-major
  std::vector<float> b;  // max_out x rank, row-major
};

generated generate(const vera::projection_spec& spec) {
  generated g;
  g.a.resize(static_cast<std::size_t>(spec.rank * spec.max_in));
  g.b.resize(static_cast<std::size_t>(spec.max_out * spec.rank));
  vera::generate_projection(spec, g.a.data(), g.b.data());
  return g;
}

// Philox4x32-10 as published (Salmon, Moraes, Dror, Shaw, SC'11, and Random123), written
// independently of the library: each round is S-box then key schedule, rather than the
// library's bump-before-round, so a shared slip in the round structure would not cancel out.
std::array<std::uint32_t, 4> published_philox(std::array<std::uint32_t, 4> ctr,
                                              std::array<std::uint32_t, 2> key) {
  constexpr std::uint32_t multiplier0 = 0xD2511F53u;
  constexpr std::uint32_t multiplier1 = 0xCD9E8D57u;
  constexpr std::uint32_t weyl0 = 0x9E3779B9u;
  constexpr std::uint32_t weyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(multiplier0) * ctr[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(multiplier1) * ctr[2];
    ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<std::uint32_t>(p0)};
    key[0] += weyl0;
    key[1] += weyl1;
  }
  return ctr;
}

// The documented element recipe: counter (col / 4, row, matrix, 0), key = seed, word col % 4,
// value = s * bound * 2^-24 with s = 2 (w >> 8) - 2^24. In double the product is exact (25-bit
// times 24-bit), so the cast to float is the single rounding the library promises.
float published_element(std::uint64_t seed, std::uint32_t matrix, std::int64_t row,
                        std::int64_t col, float bound) {
  const auto words = published_philox(
      {static_cast<std::uint32_t>(col / 4), static_cast<std::uint32_t>(row), matrix, 0u},
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
  const std::uint32_t word = words[static_cast<std::size_t>(col % 4)];
  const double centred = 2.0 * static_cast<double>(word >> 8) - 16777216.0;
  return static_cast<float>(centred * static_cast<double>(bound) / 16777216.0);
}

struct kat {
  std::array<std::uint32_t, 4> counter;
  std::array<std::uint32_t, 2> key;
  std::array<std::uint32_t, 4> expected;
};

// Known-answer vectors of Philox4x32-10 from Random123's kat_vectors.
const kat philox_kats[] = {
    {{0u, 0u, 0u, 0u}, {0u, 0u}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
     {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
     {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

// generate() is constexpr, so the first vector doubles as a compile-time check.
static_assert(vera::detail::philox4x32::generate({0u, 0u, 0u, 0u}, {0u, 0u})[0] == 0x6627e8d5u,
              "Philox4x32-10 known answer");

}  // namespace

TEST_CASE("peft generator reproduces PEFT's A and B for key 0 (fused rounding)", "[core][peft]") {
  const vera::projection_spec spec{0, 8, 16, 12, vera::generator::peft, vera::peft_rounding::fused};
  const generated g = generate(spec);
  const std::uint32_t a_expected[] = {0xbb963b71u, 0x3ea83195u, 0xbf0106d0u, 0xbee6be0fu};
  const std::uint32_t b_expected[] = {0xbe9b1e2cu, 0xbf35b651u, 0xbe3ca34fu, 0x3e3d8fb5u};
  for (std::size_t j = 0; j < 4; ++j) {
    INFO("column " << j);
    CHECK(bits_of(g.a[j]) == a_expected[j]);
    CHECK(bits_of(g.b[j]) == b_expected[j]);
  }
}

TEST_CASE("peft generator's separate rounding matches torch's scalar kernel", "[core][peft]") {
  vera::projection_spec spec{0, 8, 16, 12, vera::generator::peft, vera::peft_rounding::separate};
  const generated separate = generate(spec);
  CHECK(bits_of(separate.a[0]) == 0xbb963b80u);

  // The kernels differ only in how u * span is rounded: by at most one ulp of the span's scale,
  // which is a last-bit difference except for the rare values that cancel to near zero.
  spec.rounding = vera::peft_rounding::fused;
  const generated fused = generate(spec);
  const float ulp_of_bound = vera::detail::kaiming_uniform_bound(spec.max_in) / 8388608.0f;
  std::size_t differing = 0;
  for (std::size_t i = 0; i < fused.a.size(); ++i) {
    CHECK(std::fabs(fused.a[i] - separate.a[i]) <= ulp_of_bound);
    if (fused.a[i] != separate.a[i]) ++differing;
  }
  CHECK(differing > fused.a.size() / 8);
  CHECK(differing < fused.a.size());
}

TEST_CASE("peft generator draws A then B from one mt19937 stream seeded with the low 32 bits",
          "[core][peft]") {
  const vera::projection_spec spec{0x1234567u, 5, 11, 6};
  const generated g = generate(spec);

  std::mt19937 engine(0x1234567u);
  const float bound_a = vera::detail::kaiming_uniform_bound(11);
  const float bound_b = vera::detail::kaiming_uniform_bound(5);
  std::vector<float> a(g.a.size()), b(g.b.size());
  vera::detail::peft_uniform_fill(engine, -bound_a, bound_a, vera::peft_rounding::fused, a.data(),
                          a.size());
  vera::detail::peft_uniform_fill(engine, -bound_b, bound_b, vera::peft_rounding::fused, b.data(),
                          b.size());
  CHECK(a == g.a);
  CHECK(b == g.b);
  for (float v : g.a) CHECK((v >= -bound_a && v <= bound_a));
  for (float v : g.b) CHECK((v >= -bound_b && v <= bound_b));

  vera::projection_spec high_bits = spec;
  high_bits.seed += std::uint64_t{1} << 32;
  const generated same = generate(high_bits);
  CHECK(same.a == g.a);
  CHECK(same.b == g.b);
}

TEST_CASE("kaiming bound is sqrt(6 / fan_in) rounded to float", "[core][peft]") {
  for (std::int64_t fan_in : {1, 7, 8, 16, 67, 768, 4096}) {
    INFO("fan_in " << fan_in);
    const double exact = std::sqrt(6.0 / static_cast<double>(fan_in));
    const float bound = vera::detail::kaiming_uniform_bound(fan_in);
    // torch computes sqrt(3) * (sqrt(2) / sqrt(fan_in)) in double: a few double roundings, then
    // one float rounding, so the result is within one float ulp of the exact value.
    CHECK(std::fabs(static_cast<double>(bound) - exact) <= exact * 1.2e-7);
  }
}

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors", "[core][philox]") {
  for (const kat& k : philox_kats) {
    const auto library = vera::detail::philox4x32::generate(k.counter, k.key);
    const auto published = published_philox(k.counter, k.key);
    for (std::size_t w = 0; w < 4; ++w) {
      INFO("counter[0] " << k.counter[0] << ", word " << w);
      CHECK(library[w] == k.expected[w]);
      CHECK(published[w] == k.expected[w]);
    }
  }
}

TEST_CASE("Philox4x32-10 agrees with the published algorithm on many counters and keys",
          "[core][philox]") {
  std::mt19937 engine(2024);
  for (int trial = 0; trial < 2000; ++trial) {
    const std::array<std::uint32_t, 4> counter{
        static_cast<std::uint32_t>(engine()), static_cast<std::uint32_t>(engine()),
        static_cast<std::uint32_t>(engine()), static_cast<std::uint32_t>(engine())};
    const std::array<std::uint32_t, 2> key{static_cast<std::uint32_t>(engine()),
                                           static_cast<std::uint32_t>(engine())};
    if (vera::detail::philox4x32::generate(counter, key) != published_philox(counter, key)) {
      FAIL("mismatch at trial " << trial);
    }
  }
}

TEST_CASE("philox projection keeps the bits it was first released with", "[core][philox]") {
  const vera::projection_spec spec{42, 4, 9, 7, vera::generator::philox};
  const generated g = generate(spec);
  // Computed once from the implementation; any change here changes every saved philox adapter.
  const std::uint32_t a_row1[] = {0xbec79fcfu, 0xbc6b6935u, 0xbf02cc2au, 0xbe0b3ce6u, 0xbf197a9du};
  const std::uint32_t b_row2[] = {0x3f90c8e4u, 0xbda72be1u, 0xbdd9810au, 0xbf0f2006u};
  for (std::size_t j = 0; j < 5; ++j) CHECK(bits_of(g.a[9 + j]) == a_row1[j]);
  for (std::size_t j = 0; j < 4; ++j) CHECK(bits_of(g.b[2 * 4 + j]) == b_row2[j]);
}

TEST_CASE("philox projection equals the published recipe element by element", "[core][philox]") {
  for (const vera::projection_spec spec :
       {vera::projection_spec{42, 4, 9, 7, vera::generator::philox},
        vera::projection_spec{7, 13, 67, 5, vera::generator::philox},
        vera::projection_spec{0xfedcba9876543210u, 9, 1, 130, vera::generator::philox}}) {
    INFO("seed " << spec.seed << ", rank " << spec.rank);
    const generated g = generate(spec);
    const float bound_a = vera::detail::kaiming_uniform_bound(spec.max_in);
    const float bound_b = vera::detail::kaiming_uniform_bound(spec.rank);
    std::size_t mismatches = 0;
    for (std::int64_t i = 0; i < spec.rank; ++i) {
      for (std::int64_t j = 0; j < spec.max_in; ++j) {
        const float expected = published_element(spec.seed, 0u, i, j, bound_a);
        if (bits_of(g.a[static_cast<std::size_t>(i * spec.max_in + j)]) != bits_of(expected)) {
          ++mismatches;
        }
      }
    }
    for (std::int64_t i = 0; i < spec.max_out; ++i) {
      for (std::int64_t j = 0; j < spec.rank; ++j) {
        const float expected = published_element(spec.seed, 1u, i, j, bound_b);
        if (bits_of(g.b[static_cast<std::size_t>(i * spec.rank + j)]) != bits_of(expected)) {
          ++mismatches;
        }
      }
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("philox element does not depend on the projection's extents", "[core][philox]") {
  // A's bound depends on max_in and B's on rank only, so growing the other extents must leave
  // every existing element's bits alone: that is what lets a kernel regenerate any tile.
  const vera::projection_spec small{99, 6, 10, 5, vera::generator::philox};
  const generated s = generate(small);

  const generated more_rows_of_a = generate({99, 20, 10, 50, vera::generator::philox});
  for (std::int64_t i = 0; i < small.rank; ++i) {
    for (std::int64_t j = 0; j < small.max_in; ++j) {
      CHECK(bits_of(more_rows_of_a.a[static_cast<std::size_t>(i * 10 + j)]) ==
            bits_of(s.a[static_cast<std::size_t>(i * 10 + j)]));
    }
  }
  const generated wider_b_source = generate({99, 6, 300, 40, vera::generator::philox});
  for (std::int64_t i = 0; i < small.max_out; ++i) {
    for (std::int64_t j = 0; j < small.rank; ++j) {
      CHECK(bits_of(wider_b_source.b[static_cast<std::size_t>(i * 6 + j)]) ==
            bits_of(s.b[static_cast<std::size_t>(i * 6 + j)]));
    }
  }
}

TEST_CASE("philox A and B differ, and different seeds differ", "[core][philox]") {
  // rank == max_in makes A and B share a bound, so equal bits could only come from equal words.
  const vera::projection_spec spec{5, 32, 32, 32, vera::generator::philox};
  const generated g = generate(spec);
  vera::projection_spec other = spec;
  other.seed = 6;
  const generated h = generate(other);
  vera::projection_spec high = spec;
  high.seed += std::uint64_t{1} << 32;  // the upper half of the seed is part of the key
  const generated k = generate(high);
  std::size_t same_ab = 0, same_seed = 0, same_high = 0;
  for (std::size_t i = 0; i < g.a.size(); ++i) {
    same_ab += g.a[i] == g.b[i];
    same_seed += g.a[i] == h.a[i];
    same_high += g.a[i] == k.a[i];
  }
  // 24 random bits per value: a handful of coincidences among 1024 would already be suspicious.
  CHECK(same_ab <= 2);
  CHECK(same_seed <= 2);
  CHECK(same_high <= 2);
}

TEST_CASE("philox values are uniform on [-bound, bound)", "[core][philox]") {
  const vera::projection_spec spec{3, 256, 512, 8, vera::generator::philox};
  const generated g = generate(spec);
  const double bound = vera::detail::kaiming_uniform_bound(spec.max_in);
  const double n = static_cast<double>(g.a.size());  // 131072 values
  double sum = 0.0, sum_sq = 0.0;
  std::array<double, 8> bins{};
  std::size_t out_of_range = 0;
  for (float v : g.a) {
    if (!(v >= -bound && v < bound)) {
      ++out_of_range;
      continue;
    }
    sum += v;
    sum_sq += static_cast<double>(v) * v;
    bins[static_cast<std::size_t>((v + bound) / (2 * bound) * 8)] += 1;
  }
  REQUIRE(out_of_range == 0);
  const double mean = sum / n;
  const double variance = sum_sq / n - mean * mean;
  // For U(-b, b): mean 0 with standard error b / sqrt(3 n) ~ 0.0016 b, variance b^2 / 3 with
  // relative standard error sqrt(4/5 / n) ~ 0.0025, bin frequency 1/8 with standard error
  // ~0.0009. The tolerances are 6-11 standard errors: loose enough for any correct generator,
  // tight enough to catch a wrong bound, a one-sided range or a stuck bit. The seed is fixed,
  // so the outcome never changes from run to run.
  CHECK(std::fabs(mean) <= 0.01 * bound);
  CHECK(std::fabs(variance / (bound * bound / 3.0) - 1.0) <= 0.02);
  for (double count : bins) CHECK(std::fabs(count / n - 0.125) <= 0.01);
}

TEST_CASE("word-to-float conversions cover their ranges exactly", "[core][philox]") {
  const float bound = 0.75f;
  CHECK(vera::detail::symmetric_unit_to_float(0u, bound) == -bound);
  CHECK(vera::detail::symmetric_unit_to_float(0xffffffffu, bound) < bound);
  CHECK(vera::detail::symmetric_unit_to_float(0xffffffffu, bound) == bound - 2 * bound / 16777216.0f);
  CHECK(vera::detail::symmetric_unit_to_float(0x80000000u, bound) == 0.0f);
  CHECK(vera::detail::unit_interval_float(0u) == 0.0f);
  CHECK(vera::detail::unit_interval_float(0xffffffffu) == 1.0f - 1.0f / 16777216.0f);
  CHECK(vera::detail::unit_interval_float(0x80000000u) == 0.5f);
}
