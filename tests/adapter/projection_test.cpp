// SPDX-License-Identifier: Apache-2.0
// Tests of the shared projection: storage sharing, per-layer slices, widening, wrapped matrices.
#include <catch2/catch.hpp>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using Catch::Matchers::Contains;
using vera_test::same_bits;

TEMPLATE_TEST_CASE("projection copies share one buffer", "[adapter][projection]", float, double) {
  const vera::projection<TestType> original(vera::projection_spec{3, 8, 16, 12});
  const vera::projection<TestType> copy = original;  // NOLINT: the copy is what is tested
  CHECK(copy.shares_storage_with(original));
  CHECK(copy.a().data() == original.a().data());
  CHECK(copy.b().data() == original.b().data());
  CHECK(copy.spec() == original.spec());

  const vera::projection<TestType> regenerated(vera::projection_spec{3, 8, 16, 12});
  CHECK_FALSE(regenerated.shares_storage_with(original));
  CHECK(same_bits(regenerated.a(), original.a()));
  CHECK(same_bits(regenerated.b(), original.b()));
}

TEMPLATE_TEST_CASE("projection reports its spec and extents", "[adapter][projection]", float,
                   double) {
  const vera::projection_spec spec{9, 5, 11, 7, vera::generator::philox};
  const vera::projection<TestType> p(spec);
  CHECK(p.spec() == spec);
  CHECK(p.rank() == 5);
  CHECK(p.max_in() == 11);
  CHECK(p.max_out() == 7);
  CHECK(p.a().rows() == 5);
  CHECK(p.a().cols() == 11);
  CHECK(p.b().rows() == 7);
  CHECK(p.b().cols() == 5);
}

TEMPLATE_TEST_CASE("projection slices are the top-left corners", "[adapter][projection]", float,
                   double) {
  const vera::projection<TestType> p(vera::projection_spec{1, 8, 16, 12});
  for (vera::index rank : {1, 3, 8}) {
    for (vera::index in : {1, 9, 16}) {
      INFO("rank " << rank << ", in " << in);
      const auto a = p.a(in, rank);
      CHECK(same_bits(a, p.a().topLeftCorner(rank, in)));
      CHECK(a.data() == p.a().data());  // a view, not a copy
    }
    for (vera::index out : {1, 7, 12}) {
      INFO("rank " << rank << ", out " << out);
      CHECK(same_bits(p.b(out, rank), p.b().topLeftCorner(out, rank)));
    }
  }
}

TEMPLATE_TEST_CASE("projection slices outside the projection are refused", "[adapter][projection]",
                   float, double) {
  const vera::projection<TestType> p(vera::projection_spec{1, 8, 16, 12});
  CHECK_THROWS_AS(p.a(17, 8), vera::shape_error);
  CHECK_THROWS_WITH(p.a(17, 8), Contains("in_features") && Contains("17") && Contains("16"));
  CHECK_THROWS_AS(p.b(13, 8), vera::shape_error);
  CHECK_THROWS_WITH(p.b(13, 8), Contains("out_features") && Contains("13") && Contains("12"));
  CHECK_THROWS_AS(p.a(16, 9), vera::rank_error);
  CHECK_THROWS_AS(p.b(12, 9), vera::rank_error);
  CHECK_THROWS_WITH(p.a(16, 9), Contains("rank") && Contains("9") && Contains("8"));
  CHECK_THROWS_AS(p.a(0, 8), vera::value_error);
  CHECK_THROWS_AS(p.a(16, 0), vera::value_error);
}

TEST_CASE("double projection is the float projection widened exactly", "[adapter][projection]") {
  for (vera::generator kind : {vera::generator::peft, vera::generator::philox}) {
    const vera::projection_spec spec{17, 6, 20, 9, kind};
    const vera::projection<float> single(spec);
    const vera::projection<double> widened(spec);
    CHECK(same_bits(widened.a(), single.a().cast<double>()));
    CHECK(same_bits(widened.b(), single.b().cast<double>()));
  }
}

TEMPLATE_TEST_CASE("projection refuses a bad spec", "[adapter][projection]", float, double) {
  CHECK_THROWS_AS(vera::projection<TestType>(vera::projection_spec{0, 0, 4, 4}), vera::value_error);
  CHECK_THROWS_WITH(vera::projection<TestType>(vera::projection_spec{0, 4, 4, -1}),
                    Contains("max_out"));
}

TEMPLATE_TEST_CASE("projection wraps external matrices of the right shape", "[adapter][projection]",
                   float, double) {
  const vera::projection_spec spec{5, 3, 4, 6};
  const auto a = vera_test::random_matrix<TestType>(3, 4, 1);
  const auto b = vera_test::random_matrix<TestType>(6, 3, 2);
  const vera::projection<TestType> wrapped(spec, a, b);
  CHECK(same_bits(wrapped.a(), a));  // taken as given, not regenerated
  CHECK(same_bits(wrapped.b(), b));
  CHECK(wrapped.spec() == spec);

  using rows = vera::row_matrix<TestType>;
  CHECK_THROWS_AS(vera::projection<TestType>(spec, rows(4, 3), rows(6, 3)), vera::shape_error);
  CHECK_THROWS_WITH(vera::projection<TestType>(spec, rows(4, 3), rows(6, 3)),
                    Contains("projection A") && Contains("3 x 4") && Contains("4 x 3"));
  CHECK_THROWS_AS(vera::projection<TestType>(spec, rows(3, 4), rows(3, 6)), vera::shape_error);
  CHECK_THROWS_WITH(vera::projection<TestType>(spec, rows(3, 4), rows(3, 6)),
                    Contains("projection B") && Contains("6 x 3") && Contains("3 x 6"));
  CHECK_THROWS_AS(
      vera::projection<TestType>(vera::projection_spec{5, 0, 4, 6}, rows(0, 4), rows(6, 0)),
      vera::value_error);
}
