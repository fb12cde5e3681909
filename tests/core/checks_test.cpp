// SPDX-License-Identifier: Apache-2.0
// Tests of the boundary checks: projection specs, extents, and messages that name the operand.
#include <catch2/catch.hpp>

#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <vera/core/error.hpp>
#include <vera/core/projection_spec.hpp>
#include <vera/core/shape.hpp>

using Catch::Matchers::Contains;

static_assert(std::is_base_of_v<std::runtime_error, vera::error>);
static_assert(std::is_base_of_v<vera::error, vera::shape_error>);
static_assert(std::is_base_of_v<vera::shape_error, vera::rank_error>);
static_assert(std::is_base_of_v<vera::error, vera::value_error>);
static_assert(std::is_base_of_v<vera::error, vera::aliasing_error>);
static_assert(std::is_base_of_v<vera::error, vera::state_error>);

TEST_CASE("projection_spec validation names the offending field", "[core][spec]") {
  CHECK_NOTHROW(vera::validate(vera::projection_spec{0, 8, 16, 12}));

  struct bad_case {
    vera::projection_spec spec;
    const char* field;
    const char* value;
  };
  const std::vector<bad_case> cases = {
      {{0, 0, 16, 12}, "projection rank", "got 0"},
      {{0, -3, 16, 12}, "projection rank", "got -3"},
      {{0, 8, 0, 12}, "projection max_in", "got 0"},
      {{0, 8, -1, 12}, "projection max_in", "got -1"},
      {{0, 8, 16, 0}, "projection max_out", "got 0"},
      {{0, 8, 16, -7}, "projection max_out", "got -7"},
  };
  for (const auto& c : cases) {
    INFO(c.field << ", " << c.value);
    CHECK_THROWS_AS(vera::validate(c.spec), vera::value_error);
    CHECK_THROWS_WITH(vera::validate(c.spec), Contains(c.field) && Contains(c.value));
    std::vector<float> a(1), b(1);
    CHECK_THROWS_AS(vera::generate_projection(c.spec, a.data(), b.data()), vera::value_error);
  }
}

TEST_CASE("projection_spec refuses extents too large to address", "[core][spec]") {
  const vera::index huge = std::numeric_limits<vera::index>::max() / 2;
  CHECK_THROWS_AS(vera::validate(vera::projection_spec{0, huge, huge, 1}), vera::value_error);
  CHECK_THROWS_WITH(vera::validate(vera::projection_spec{0, 1 << 20, 1 << 30, 1}),
                    Contains("too large"));
  CHECK_THROWS_AS(vera::validate(vera::projection_spec{0, 1 << 20, 1, 1 << 30}), vera::value_error);
}

TEST_CASE("projection_spec equality ignores the rounding only for philox", "[core][spec]") {
  vera::projection_spec a{1, 8, 16, 12, vera::generator::peft, vera::peft_rounding::fused};
  vera::projection_spec b = a;
  CHECK(a == b);
  b.rounding = vera::peft_rounding::separate;
  CHECK(a != b);
  a.kind = b.kind = vera::generator::philox;
  CHECK(a == b);
  b.seed = 2;
  CHECK(a != b);
}

TEST_CASE("shape checks name the operand, the expected and the actual extents", "[core][shape]") {
  CHECK_NOTHROW(vera::detail::check_shape("W0", 3, 4, 3, 4));
  CHECK_THROWS_AS(vera::detail::check_shape("W0", 3, 4, 5, 6), vera::shape_error);
  CHECK_THROWS_WITH(vera::detail::check_shape("W0", 3, 4, 5, 6),
                    Contains("W0") && Contains("3 x 4") && Contains("5 x 6"));

  CHECK_NOTHROW(vera::detail::check_size("bias", 7, 7));
  CHECK_THROWS_AS(vera::detail::check_size("bias", 7, 9), vera::shape_error);
  CHECK_THROWS_WITH(vera::detail::check_size("bias", 7, 9),
                    Contains("bias") && Contains("7") && Contains("9"));

  CHECK_NOTHROW(vera::detail::check_cols("X", 16, 16, "in_features"));
  CHECK_THROWS_AS(vera::detail::check_cols("X", 16, 15, "in_features"), vera::shape_error);
  CHECK_THROWS_WITH(vera::detail::check_cols("X", 16, 15, "in_features"),
                    Contains("X") && Contains("16") && Contains("15") && Contains("in_features"));

  CHECK_NOTHROW(vera::detail::check_rows("G", 5, 5, "forward rows"));
  CHECK_THROWS_AS(vera::detail::check_rows("G", 5, 4, "forward rows"), vera::shape_error);
  CHECK_THROWS_WITH(vera::detail::check_rows("G", 5, 4, "forward rows"),
                    Contains("G") && Contains("5") && Contains("4") && Contains("rows"));

  CHECK_NOTHROW(vera::detail::check_positive("in_features", 1));
  CHECK_THROWS_AS(vera::detail::check_positive("in_features", 0), vera::value_error);
  CHECK_THROWS_WITH(vera::detail::check_positive("in_features", -2),
                    Contains("in_features") && Contains("-2"));

  CHECK_NOTHROW(vera::detail::check_fits("out_features", 12, 12));
  CHECK_THROWS_AS(vera::detail::check_fits("out_features", 13, 12), vera::shape_error);
  CHECK_THROWS_WITH(vera::detail::check_fits("out_features", 13, 12),
                    Contains("out_features") && Contains("13") && Contains("12"));
}
