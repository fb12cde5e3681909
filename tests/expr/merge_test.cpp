// SPDX-License-Identifier: Apache-2.0
// Tests of ΔW, merged weight, merge/unmerge/safe_merge, and the cost model picking the order.
#include <catch2/catch.hpp>

#include <limits>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using Catch::Matchers::Contains;
using vera_test::compare;
using vera_test::layer_shape;
using vera_test::same_bits;
using vera_test::wide;
using vera_test::wide_matrix;

namespace {

vera::adapter_options layout(bool fan_in_fan_out) {
  vera::adapter_options options;
  options.fan_in_fan_out = fan_in_fan_out;
  return options;
}

// The reference works in out x in; the library in the adapter's storage layout.
wide_matrix stored(const wide_matrix& out_by_in, bool fan_in_fan_out) {
  return fan_in_fan_out ? wide_matrix(out_by_in.transpose()) : out_by_in;
}

template <class T>
wide tolerance(const layer_shape& s) {
  return vera_test::tolerance_factor<T>(vera_test::rounding_depth(s.rows, s.in, s.out, s.rank));
}

}  // namespace

TEMPLATE_TEST_CASE("delta_weight and merged_weight match the reference", "[expr][merge]", float,
                   double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  std::uint32_t seed = 500;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      INFO("in " << shape.in << ", out " << shape.out << ", rank " << shape.rank
                 << ", fan_in_fan_out " << fan_in_fan_out);
      const vera_test::test_layer<T> layer(shape, layout(fan_in_fan_out), seed++);
      const auto v = vera_test::capture(layer.x, layer.w0, nullptr, layer.ad);
      const auto m = vera_test::magnitudes(v);
      const wide_matrix delta = stored(vera_test::reference_delta(v), fan_in_fan_out);
      const wide_matrix delta_magnitude = stored(vera_test::reference_delta(m), fan_in_fan_out);
      const wide_matrix w0 = layer.w0.template cast<wide>();
      const wide_matrix w0_magnitude = layer.w0.cwiseAbs().template cast<wide>();

      const matrix dw = vera::delta_weight(layer.ad);
      CHECK(dw.rows() == layer.w0.rows());
      CHECK(dw.cols() == layer.w0.cols());
      const auto cd = compare(dw, delta, delta_magnitude, tolerance<T>(shape));
      INFO("delta_weight: " << cd);
      CHECK(cd.ok());

      const matrix merged = vera::merged_weight(layer.w0, layer.ad);
      const auto cm =
          compare(merged, w0 + delta, w0_magnitude + delta_magnitude, tolerance<T>(shape));
      INFO("merged_weight: " << cm);
      CHECK(cm.ok());
      // A caller's workspace changes where Λb B Λd is built, not the bits.
      vera::workspace<T> ws;
      const matrix merged_in_ws = vera::merged_weight(layer.w0, layer.ad).using_workspace(ws);
      CHECK(same_bits(merged_in_ws, merged));

      matrix added = layer.w0;
      vera::delta_weight(layer.ad).add_to(added);
      CHECK(compare(added, w0 + delta, w0_magnitude + delta_magnitude, tolerance<T>(shape)).ok());
      matrix subtracted = layer.w0;
      vera::delta_weight(layer.ad).subtract_from(subtracted);
      CHECK(compare(subtracted, w0 - delta, w0_magnitude + delta_magnitude, tolerance<T>(shape))
                .ok());
    }
  }
}

TEMPLATE_TEST_CASE("merge then unmerge restores W0", "[expr][merge]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  std::uint32_t seed = 600;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      INFO("in " << shape.in << ", out " << shape.out << ", rank " << shape.rank
                 << ", fan_in_fan_out " << fan_in_fan_out);
      const vera_test::test_layer<T> layer(shape, layout(fan_in_fan_out), seed++);
      const auto v = vera_test::capture(layer.x, layer.w0, nullptr, layer.ad);
      const wide_matrix delta_magnitude =
          stored(vera_test::reference_delta(vera_test::magnitudes(v)), fan_in_fan_out);
      const wide_matrix w0_magnitude = layer.w0.cwiseAbs().template cast<wide>();

      matrix w = layer.w0;
      vera::merge(w, layer.ad);
      const matrix expected_merged = vera::merged_weight(layer.w0, layer.ad);
      CHECK(same_bits(w, expected_merged));  // one arithmetic, however it is reached

      matrix safe = layer.w0;
      vera::safe_merge(safe, layer.ad);
      CHECK(same_bits(safe, w));

      vera::unmerge(w, layer.ad);
      // Merge and unmerge round once each (half an ulp of |W0| + |ΔW|), and the two ΔW products
      // may differ by their own rounding (rank terms each) if they are not bit-identical: the
      // restored W0 is within (2 + 2 rank) eps of |W0| + |ΔW|.
      const wide factor =
          (2 + 2 * shape.rank) * static_cast<wide>(std::numeric_limits<T>::epsilon());
      const auto c =
          compare(w, layer.w0.template cast<wide>(), w0_magnitude + delta_magnitude, factor);
      INFO("restored W0: " << c);
      CHECK(c.ok());
    }
  }
}

TEMPLATE_TEST_CASE("merged forward equals the unmerged forward", "[expr][merge]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  std::uint32_t seed = 700;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      INFO("n " << shape.rows << ", in " << shape.in << ", out " << shape.out << ", rank "
                << shape.rank << ", fan_in_fan_out " << fan_in_fan_out);
      const vera_test::test_layer<T> layer(shape, layout(fan_in_fan_out), seed++);
      const matrix adapted = vera::forward(layer.x, layer.w0, layer.bias, layer.ad);
      const matrix w = vera::merged_weight(layer.w0, layer.ad);
      matrix base_only = fan_in_fan_out ? matrix(layer.x * w) : matrix(layer.x * w.transpose());
      base_only.rowwise() += layer.bias.transpose();

      const auto v = vera_test::capture(layer.x, layer.w0, &layer.bias, layer.ad);
      const auto magnitude = vera_test::reference_forward(vera_test::magnitudes(v)).y;
      // Both are within budget of the reference, so within twice the budget of each other.
      const auto c =
          compare(base_only, adapted.template cast<wide>(), magnitude, 2 * tolerance<T>(shape));
      INFO(c);
      CHECK(c.ok());
    }
  }
}

TEMPLATE_TEST_CASE("safe_merge refuses a non-finite result and leaves W0 untouched",
                   "[expr][merge]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (bool fan_in_fan_out : {false, true}) {
    for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                  -std::numeric_limits<T>::infinity()}) {
      for (bool lambda_b : {true, false}) {
        INFO("fan_in_fan_out " << fan_in_fan_out << ", bad value " << bad << " in "
                               << (lambda_b ? "lambda_b" : "lambda_d"));
        vera_test::test_layer<T> layer({4, 9, 7, 6}, layout(fan_in_fan_out), 44);
        // Set through the writable view: set_lambdas would refuse it up front.
        if (lambda_b) {
          layer.ad.lambda_b()(3) = bad;
        } else {
          layer.ad.lambda_d()(1) = bad;
        }
        matrix w = layer.w0;
        CHECK_THROWS_AS(vera::safe_merge(w, layer.ad), vera::value_error);
        CHECK_THROWS_WITH(vera::safe_merge(w, layer.ad),
                          Contains("not finite") && Contains("unchanged"));
        CHECK(same_bits(w, layer.w0));

        vera::workspace<T> ws;
        CHECK_THROWS_AS(vera::safe_merge(w, layer.ad, &ws), vera::value_error);
        CHECK(same_bits(w, layer.w0));
      }
    }
  }
}

TEMPLATE_TEST_CASE("merge refuses a W0 of the wrong layout", "[expr][merge]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  const vera_test::test_layer<T> conv1d({4, 9, 7, 6}, layout(true), 45);
  matrix out_by_in = vera_test::random_matrix<T>(7, 9, 46);
  const matrix before = out_by_in;
  CHECK_THROWS_AS(vera::merge(out_by_in, conv1d.ad), vera::shape_error);
  CHECK_THROWS_AS(vera::unmerge(out_by_in, conv1d.ad), vera::shape_error);
  CHECK_THROWS_AS(vera::safe_merge(out_by_in, conv1d.ad), vera::shape_error);
  CHECK_THROWS_WITH(vera::merge(out_by_in, conv1d.ad), Contains("W0") && Contains("9 x 7"));
  CHECK_THROWS_AS(vera::merged_weight(out_by_in, conv1d.ad), vera::shape_error);
  CHECK(same_bits(out_by_in, before));

  matrix wrong = matrix::Zero(9, 8);
  CHECK_THROWS_AS(vera::delta_weight(conv1d.ad).add_to(wrong), vera::shape_error);
  CHECK_THROWS_WITH(vera::delta_weight(conv1d.ad).subtract_from(wrong), Contains("destination"));
  CHECK((wrong.array() == T(0)).all());
}

TEST_CASE("cost model prefers the low-rank order for few rows", "[expr][cost]") {
  const vera::detail::product_extents small{4, 1024, 1024, 256};
  for (bool reused : {false, true}) {
    for (bool training : {false, true}) {
      const vera::detail::order_costs costs = vera::detail::forward_costs(small, training, reused);
      CHECK(costs.low_rank < costs.merged);
      CHECK(vera::detail::choose_order(vera::order::automatic, costs, true) == vera::order::low_rank);
    }
    const vera::detail::order_costs backward = vera::detail::input_gradient_costs(small, reused);
    CHECK(vera::detail::choose_order(vera::order::automatic, backward, true) == vera::order::low_rank);
  }
}

TEST_CASE("cost model merges for many rows once the weight buffer is reused", "[expr][cost]") {
  // in = out = 64, r = 8: low-rank costs 2 n r (in + out) = 2048 n; merged costs
  // 2 out r in + 4 out in = 81920 with a reused workspace (n > 40 wins) and
  // 2 out r in + 256 out in ~ 1.1e6 with a fresh buffer (n > 544 wins).
  const auto at = [](vera::index rows) { return vera::detail::product_extents{rows, 64, 64, 8}; };
  CHECK(vera::detail::choose_order(vera::order::automatic, vera::detail::forward_costs(at(40), false, true),
                           true) == vera::order::low_rank);
  CHECK(vera::detail::choose_order(vera::order::automatic, vera::detail::forward_costs(at(41), false, true),
                           true) == vera::order::merged);
  CHECK(vera::detail::choose_order(vera::order::automatic, vera::detail::forward_costs(at(500), false, false),
                           true) == vera::order::low_rank);
  CHECK(vera::detail::choose_order(vera::order::automatic, vera::detail::forward_costs(at(600), false, false),
                           true) == vera::order::merged);
  CHECK(vera::detail::choose_order(vera::order::automatic, vera::detail::input_gradient_costs(at(4096), true),
                           true) == vera::order::merged);

  // A training forward also needs P, which the merged order must compute on top.
  const vera::detail::order_costs inference = vera::detail::forward_costs(at(100), false, true);
  const vera::detail::order_costs training = vera::detail::forward_costs(at(100), true, true);
  CHECK(training.low_rank == inference.low_rank);
  CHECK(training.merged == inference.merged + 2.0 * 100 * 8 * 64);
  CHECK(inference.low_rank == 2.0 * 100 * 8 * (64 + 64));
}

TEST_CASE("cost model never merges while dropout is active and honours forced orders",
          "[expr][cost]") {
  const vera::detail::order_costs cheap_merge = vera::detail::forward_costs({1 << 20, 64, 64, 8}, true, true);
  REQUIRE(cheap_merge.merged < cheap_merge.low_rank);
  // merged_valid = false is how evaluators say "dropout is on".
  for (vera::order requested :
       {vera::order::automatic, vera::order::low_rank, vera::order::merged}) {
    CHECK(vera::detail::choose_order(requested, cheap_merge, false) == vera::order::low_rank);
  }
  CHECK(vera::detail::choose_order(vera::order::low_rank, cheap_merge, true) == vera::order::low_rank);
  const vera::detail::order_costs cheap_low_rank = vera::detail::forward_costs({1, 64, 64, 8}, false, false);
  CHECK(vera::detail::choose_order(vera::order::merged, cheap_low_rank, true) == vera::order::merged);
}

TEMPLATE_TEST_CASE("safe_merge and merge give the same bits for row-major weights too",
                   "[expr][merge]", float, double) {
  using row_matrix = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const vera::projection<TestType> shared({9, 16, 67, 41});
  vera::adapter_options random_init;
  random_init.init = vera::init_kind::random;
  for (const bool transposed : {false, true}) {
    random_init.fan_in_fan_out = transposed;
    const vera::adapter<TestType> ad(shared, 67, 41, random_init);
    const row_matrix w0 = transposed ? row_matrix::Random(67, 41) : row_matrix::Random(41, 67);
    row_matrix plain = w0, safe = w0;
    vera::merge(plain, ad);
    vera::safe_merge(safe, ad);
    CHECK(same_bits(plain, safe));
  }
}
