// SPDX-License-Identifier: Apache-2.0
// Tests of the counter-based dropout mask: reproducible, unbiased, fresh every step.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include <vera/core/dropout.hpp>
#include <vera/core/projection_spec.hpp>

namespace {

using vera::index;

std::vector<bool> mask_of(const vera::dropout_key& key, index rows, index cols) {
  std::vector<bool> mask;
  mask.reserve(static_cast<std::size_t>(rows * cols));
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < cols; ++j) mask.push_back(vera::dropout_keeps(key, i, j));
  }
  return mask;
}

double fraction_kept(const std::vector<bool>& mask) {
  std::size_t kept = 0;
  for (bool keep : mask) kept += keep;
  return static_cast<double>(kept) / static_cast<double>(mask.size());
}

double fraction_differing(const std::vector<bool>& a, const std::vector<bool>& b) {
  std::size_t differing = 0;
  for (std::size_t i = 0; i < a.size(); ++i) differing += a[i] != b[i];
  return static_cast<double>(differing) / static_cast<double>(a.size());
}

}  // namespace

TEST_CASE("dropout mask is a pure function of seed, step, row and column", "[core][dropout]") {
  const vera::dropout_key key{77, 5, 0.25};
  const auto first = mask_of(key, 40, 37);
  CHECK(mask_of(key, 40, 37) == first);
  // Evaluating in reverse order gives the same values: no hidden generator state.
  for (index i = 39; i >= 0; --i) {
    for (index j = 36; j >= 0; --j) {
      if (vera::dropout_keeps(key, i, j) != first[static_cast<std::size_t>(i * 37 + j)]) {
        FAIL("element (" << i << ", " << j << ") changed");
      }
    }
  }
}

TEST_CASE("dropout keeps about 1 - p of the elements", "[core][dropout]") {
  // 120,000 Bernoulli(1 - p) draws have a standard error of at most sqrt(0.25 / 120000) ~ 0.0015;
  // 0.01 is about 7 standard errors, and the seed is fixed, so this never flakes.
  for (double p : {0.1, 0.25, 0.5, 0.9}) {
    INFO("p = " << p);
    CHECK(std::fabs(fraction_kept(mask_of({3, 1, p}, 300, 400)) - (1.0 - p)) <= 0.01);
  }
  CHECK(fraction_kept(mask_of({3, 1, 0.0}, 50, 50)) == 1.0);
}

TEST_CASE("dropout masks change with the step and the seed", "[core][dropout]") {
  // Two independent masks with keep probability 1/2 disagree on about half of the elements.
  const auto base = mask_of({11, 0, 0.5}, 100, 100);
  CHECK(fraction_differing(base, mask_of({11, 1, 0.5}, 100, 100)) > 0.45);
  CHECK(fraction_differing(base, mask_of({12, 0, 0.5}, 100, 100)) > 0.45);
  // Both halves of the 64-bit seed and step take part.
  CHECK(fraction_differing(base, mask_of({11 + (std::uint64_t{1} << 32), 0, 0.5}, 100, 100)) >
        0.45);
  CHECK(fraction_differing(base, mask_of({11, std::uint64_t{1} << 32, 0.5}, 100, 100)) > 0.45);
}

TEST_CASE("dropout masks of neighbouring rows and column groups are unrelated", "[core][dropout]") {
  const vera::dropout_key key{21, 3, 0.5};
  std::size_t rows_equal = 0, groups_equal = 0, pairs = 0;
  for (index i = 0; i < 200; ++i) {
    for (index j = 0; j < 64; ++j) {
      rows_equal += vera::dropout_keeps(key, i, j) == vera::dropout_keeps(key, i + 1, j);
      groups_equal += vera::dropout_keeps(key, i, j) == vera::dropout_keeps(key, i, j + 4);
      ++pairs;
    }
  }
  CHECK(std::fabs(static_cast<double>(rows_equal) / static_cast<double>(pairs) - 0.5) < 0.05);
  CHECK(std::fabs(static_cast<double>(groups_equal) / static_cast<double>(pairs) - 0.5) < 0.05);
}

TEST_CASE("dropout masks are independent of a projection generated from the same seed",
          "[core][dropout]") {
  // Layers commonly use one seed for everything (both default to 0). If the dropout stream
  // and the philox projection stream share counters, the mask of the first steps is a function
  // of A or B themselves, and drop(X) A^T is biased on the diagonal tokens. With p = 1/2 an
  // independent mask agrees with sign(A) on half of the elements (standard error 0.008 here).
  const std::uint64_t seed = 0;
  const vera::index size = 64;
  const vera::projection_spec spec{seed, size, size, size, vera::generator::philox};
  std::vector<float> a(static_cast<std::size_t>(size * size)), b(a.size());
  vera::generate_projection(spec, a.data(), b.data());
  for (std::uint64_t step : {0u, 1u}) {
    const std::vector<float>& matrix = step == 0 ? a : b;
    const auto mask = mask_of({seed, step, 0.5}, size, size);
    std::size_t agree = 0;
    for (std::size_t e = 0; e < mask.size(); ++e) agree += mask[e] == (matrix[e] >= 0.0f);
    INFO("step " << step << " (compared with " << (step == 0 ? "A" : "B") << ")");
    CHECK(std::fabs(static_cast<double>(agree) / static_cast<double>(mask.size()) - 0.5) < 0.05);
  }
}
