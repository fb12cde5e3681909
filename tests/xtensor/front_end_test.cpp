// SPDX-License-Identifier: Apache-2.0
// The core's test cases written once and run on every front-end: Eigen (both storage orders) and xtensor.
#include <catch2/catch.hpp>

#include <limits>
#include <sstream>
#include <string>

#include "front_ends.hpp"

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using vera_test::compare;
using vera_test::eigen_front;
using vera_test::eigen_row_front;
using vera_test::layer_shape;
using vera_test::same_bits;
using vera_test::wide;
using vera_test::wide_matrix;
using vera_test::xtensor_front;

namespace {

const vera::order all_orders[] = {vera::order::automatic, vera::order::low_rank,
                                  vera::order::merged};

vera::adapter_options options_for(bool fan_in_fan_out, double dropout = 0.0) {
  vera::adapter_options options;
  options.fan_in_fan_out = fan_in_fan_out;
  options.dropout = dropout;
  return options;
}

std::string describe(const char* front_end, const layer_shape& s, bool fan_in_fan_out,
                     bool with_bias, double dropout) {
  std::ostringstream os;
  os << front_end << ": n " << s.rows << ", in " << s.in << ", out " << s.out << ", rank "
     << s.rank << ", fan_in_fan_out " << fan_in_fan_out << ", bias " << with_bias << ", dropout "
     << dropout;
  return os.str();
}

template <class T>
wide tolerance(const layer_shape& s) {
  return vera_test::tolerance_factor<T>(vera_test::rounding_depth(s.rows, s.in, s.out, s.rank));
}

template <class T>
wide_matrix widen(const vera_test::matrix<T>& m) {
  return m.template cast<wide>();
}

// The reference works in out x in; the library in the adapter's storage layout.
wide_matrix stored(const wide_matrix& out_by_in, bool fan_in_fan_out) {
  return fan_in_fan_out ? wide_matrix(out_by_in.transpose()) : out_by_in;
}

}  // namespace

#define VERA_FRONT_ENDS (eigen_front, eigen_row_front, xtensor_front)

TEMPLATE_PRODUCT_TEST_CASE("front-end: forward matches the reference, overwriting and adding",
                           "[front-end][forward]", VERA_FRONT_ENDS, (float, double)) {
  using F = TestType;
  using T = typename F::scalar;
  std::uint32_t seed = 100;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (bool with_bias : {false, true}) {
        // Inference ignores the adapter's dropout setting.
        const double dropout = with_bias ? 0.25 : 0.0;
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed++);
        const vera_test::front_layer<F> op(layer);
        const auto v =
            vera_test::capture(layer.x, layer.w0, with_bias ? &layer.bias : nullptr, layer.ad);
        const wide_matrix expected = vera_test::reference_forward(v).y;
        const wide_matrix magnitude = vera_test::reference_forward(vera_test::magnitudes(v)).y;
        const vera_test::matrix<T> start = vera_test::random_matrix<T>(shape.rows, shape.out, seed++);

        vera_test::with_bias_or_not(with_bias, op.bias, [&](const auto& bias) {
          for (vera::order o : all_orders) {
            INFO(describe(F::name, shape, fan_in_fan_out, with_bias, dropout)
                 << ", order " << static_cast<int>(o));
            const auto y = F::to_eigen(F::forward(op.x, op.w0, bias, layer.ad, o));
            const auto c = compare(y, expected, magnitude, tolerance<T>(shape));
            INFO("Y = forward: " << c);
            CHECK(c.ok());

            auto accumulated = F::from(start);
            F::forward_add(accumulated, op.x, op.w0, bias, layer.ad, o);
            const auto ca = compare(F::to_eigen(accumulated), expected + widen(start),
                                    magnitude + widen<T>(start.cwiseAbs()), tolerance<T>(shape));
            INFO("forward add_to: " << ca);
            CHECK(ca.ok());
          }
        });
      }
    }
  }
}

TEMPLATE_PRODUCT_TEST_CASE("front-end: training forward matches the reference and saves P",
                           "[front-end][forward]", VERA_FRONT_ENDS, (float, double)) {
  using F = TestType;
  using T = typename F::scalar;
  std::uint32_t seed = 200;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        const bool with_bias = fan_in_fan_out;  // both bias settings, with both layouts covered above
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed++);
        const vera_test::front_layer<F> op(layer);
        vera::forward_context<T> ctx(seed++);
        vera_test::with_bias_or_not(with_bias, op.bias, [&](const auto& bias) {
          for (vera::order o : all_orders) {
            INFO(describe(F::name, shape, fan_in_fan_out, with_bias, dropout)
                 << ", order " << static_cast<int>(o));
            const auto y = F::to_eigen(F::forward(op.x, op.w0, bias, layer.ad, o, &ctx));
            REQUIRE(ctx.ready());
            CHECK(ctx.rows() == shape.rows);
            const auto v = vera_test::capture(layer.x, layer.w0, with_bias ? &layer.bias : nullptr,
                                              layer.ad, &ctx.mask_key());
            const auto expected = vera_test::reference_forward(v);
            const auto magnitude = vera_test::reference_forward(vera_test::magnitudes(v));
            const auto cy = compare(y, expected.y, magnitude.y, tolerance<T>(shape));
            const auto cp = compare(ctx.projected(), expected.p, magnitude.p, tolerance<T>(shape));
            INFO("Y: " << cy << "\nP: " << cp);
            CHECK(cy.ok());
            CHECK(cp.ok());

            const vera_test::matrix<T> start =
                vera_test::random_matrix<T>(shape.rows, shape.out, seed++);
            auto accumulated = F::from(start);
            F::forward_add(accumulated, op.x, op.w0, bias, layer.ad, o, &ctx);
            const auto va = vera_test::capture(layer.x, layer.w0, with_bias ? &layer.bias : nullptr,
                                               layer.ad, &ctx.mask_key());
            const auto ca = compare(F::to_eigen(accumulated),
                                    vera_test::reference_forward(va).y + widen(start),
                                    vera_test::reference_forward(vera_test::magnitudes(va)).y +
                                        widen<T>(start.cwiseAbs()),
                                    tolerance<T>(shape));
            INFO("training add_to: " << ca);
            CHECK(ca.ok());
          }
        });
      }
    }
  }
}

TEMPLATE_PRODUCT_TEST_CASE("front-end: gradients of b, d and X match the reference",
                           "[front-end][backward]", VERA_FRONT_ENDS, (float, double)) {
  using F = TestType;
  using T = typename F::scalar;
  std::uint32_t seed = 300;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        INFO(describe(F::name, shape, fan_in_fan_out, true, dropout));
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed++);
        const vera_test::front_layer<F> op(layer);
        vera::forward_context<T> ctx(seed++);
        (void)F::forward(op.x, op.w0, op.bias, layer.ad, vera::order::automatic, &ctx);
        const vera_test::matrix<T> g_values =
            vera_test::random_matrix<T>(shape.rows, shape.out, seed++);
        const auto g = F::from(g_values);
        const auto v = vera_test::capture(layer.x, layer.w0, &layer.bias, layer.ad, &ctx.mask_key());
        const auto expected = vera_test::reference_backward(v, widen(g_values));
        const auto magnitude =
            vera_test::reference_backward(vera_test::magnitudes(v), widen<T>(g_values.cwiseAbs()));

        const vera::gradients<T> grads = F::parameter_gradients(g, layer.ad, ctx);
        const auto cb = compare(grads.lambda_b, expected.grad_b, magnitude.grad_b, tolerance<T>(shape));
        const auto cd = compare(grads.lambda_d, expected.grad_d, magnitude.grad_d, tolerance<T>(shape));
        INFO("grad_b: " << cb << "\ngrad_d: " << cd);
        CHECK(cb.ok());
        CHECK(cd.ok());

        vera::gradients<T> start(layer.ad);
        start.lambda_b = vera_test::random_vector<T>(shape.out, seed++);
        start.lambda_d = vera_test::random_vector<T>(shape.rank, seed++);
        const vera::gradients<T> sum = F::parameter_gradients_added(start, g, layer.ad, ctx);
        const auto sb = compare(sum.lambda_b, expected.grad_b + start.lambda_b.template cast<wide>(),
                                magnitude.grad_b + start.lambda_b.cwiseAbs().template cast<wide>(),
                                tolerance<T>(shape));
        const auto sd = compare(sum.lambda_d, expected.grad_d + start.lambda_d.template cast<wide>(),
                                magnitude.grad_d + start.lambda_d.cwiseAbs().template cast<wide>(),
                                tolerance<T>(shape));
        INFO("accumulated grad_b: " << sb << "\naccumulated grad_d: " << sd);
        CHECK(sb.ok());
        CHECK(sd.ok());

        const vera_test::matrix<T> dx_start = vera_test::random_matrix<T>(shape.rows, shape.in, seed++);
        for (vera::order o : all_orders) {
          INFO("order " << static_cast<int>(o));
          const auto dx = F::to_eigen(F::input_gradient(g, op.w0, layer.ad, ctx, o));
          const auto cx = compare(dx, expected.grad_x, magnitude.grad_x, tolerance<T>(shape));
          INFO("dX: " << cx);
          CHECK(cx.ok());
          auto accumulated = F::from(dx_start);
          F::input_gradient_add(accumulated, g, op.w0, layer.ad, ctx, o);
          const auto ca = compare(F::to_eigen(accumulated), expected.grad_x + widen(dx_start),
                                  magnitude.grad_x + widen<T>(dx_start.cwiseAbs()),
                                  tolerance<T>(shape));
          INFO("dX add_to: " << ca);
          CHECK(ca.ok());
        }
      }
    }
  }
}

TEMPLATE_PRODUCT_TEST_CASE("front-end: delta weight, merged weight, merge, unmerge, safe merge",
                           "[front-end][merge]", VERA_FRONT_ENDS, (float, double)) {
  using F = TestType;
  using T = typename F::scalar;
  std::uint32_t seed = 500;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      INFO(describe(F::name, shape, fan_in_fan_out, false, 0.0));
      const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out), seed++);
      const vera_test::front_layer<F> op(layer);
      const auto v = vera_test::capture(layer.x, layer.w0, nullptr, layer.ad);
      const wide_matrix delta = stored(vera_test::reference_delta(v), fan_in_fan_out);
      const wide_matrix delta_magnitude =
          stored(vera_test::reference_delta(vera_test::magnitudes(v)), fan_in_fan_out);
      const wide_matrix w0 = widen(layer.w0);
      const wide_matrix w0_magnitude = widen<T>(layer.w0.cwiseAbs());
      const wide budget = tolerance<T>(shape);

      const auto dw = F::to_eigen(F::delta_weight(layer.ad));
      INFO("delta_weight: " << compare(dw, delta, delta_magnitude, budget));
      CHECK(compare(dw, delta, delta_magnitude, budget).ok());
      const auto merged = F::to_eigen(F::merged_weight(op.w0, layer.ad));
      CHECK(compare(merged, w0 + delta, w0_magnitude + delta_magnitude, budget).ok());

      auto added = op.w0;
      F::add_delta(added, layer.ad);
      CHECK(compare(F::to_eigen(added), w0 + delta, w0_magnitude + delta_magnitude, budget).ok());
      auto subtracted = op.w0;
      F::subtract_delta(subtracted, layer.ad);
      CHECK(compare(F::to_eigen(subtracted), w0 - delta, w0_magnitude + delta_magnitude, budget).ok());

      auto w = op.w0;
      F::merge(w, layer.ad);
      CHECK(same_bits(F::to_eigen(w), F::to_eigen(added)));  // merge is add_to, in place
      auto safe = op.w0;
      F::safe_merge(safe, layer.ad);
      CHECK(compare(F::to_eigen(safe), w0 + delta, w0_magnitude + delta_magnitude, budget).ok());

      F::unmerge(w, layer.ad);
      // One rounding each way plus the two ΔW products' own rounding (see tests/expr/merge_test).
      const wide factor = (2 + 2 * shape.rank) * static_cast<wide>(std::numeric_limits<T>::epsilon());
      const auto restored = compare(F::to_eigen(w), w0, w0_magnitude + delta_magnitude, factor);
      INFO("restored W0: " << restored);
      CHECK(restored.ok());
    }
  }
}

TEMPLATE_PRODUCT_TEST_CASE("front-end: safe merge refuses a non-finite result, W0 untouched",
                           "[front-end][merge]", VERA_FRONT_ENDS, (float, double)) {
  using F = TestType;
  using T = typename F::scalar;
  for (bool fan_in_fan_out : {false, true}) {
    for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity()}) {
      INFO(F::name << ": fan_in_fan_out " << fan_in_fan_out << ", bad value " << bad);
      vera_test::test_layer<T> layer({4, 9, 7, 6}, options_for(fan_in_fan_out), 44);
      layer.ad.lambda_d()(1) = bad;
      const vera_test::front_layer<F> op(layer);
      auto w = op.w0;
      CHECK_THROWS_AS(F::safe_merge(w, layer.ad), vera::value_error);
      CHECK_THROWS_WITH(F::safe_merge(w, layer.ad), Contains("not finite") && Contains("unchanged"));
      CHECK(same_bits(F::to_eigen(w), layer.w0));
    }
  }
}

TEMPLATE_PRODUCT_TEST_CASE("front-end: wrong shapes throw, name the operand and write nothing",
                           "[front-end][errors]", VERA_FRONT_ENDS, (float, double)) {
  using F = TestType;
  using T = typename F::scalar;
  for (bool fan_in_fan_out : {false, true}) {
    INFO(F::name << ": fan_in_fan_out " << fan_in_fan_out);
    const vera_test::test_layer<T> layer({6, 9, 7, 5}, options_for(fan_in_fan_out), 50);
    const vera_test::front_layer<F> op(layer);
    const auto o = vera::order::automatic;
    vera::forward_context<T> ctx(1);

    const auto x_bad = F::from(vera_test::matrix<T>(vera_test::matrix<T>::Ones(6, 8)));
    CHECK_THROWS_AS(F::forward(x_bad, op.w0, op.bias, layer.ad, o), vera::shape_error);
    CHECK_THROWS_WITH(F::forward(x_bad, op.w0, op.bias, layer.ad, o),
                      StartsWith("X:") && Contains("9") && Contains("8"));
    CHECK_THROWS_AS(F::forward(x_bad, op.w0, op.bias, layer.ad, o, &ctx), vera::shape_error);
    CHECK_FALSE(ctx.ready());  // a refused training forward does not start a step

    const auto w_transposed = F::from(vera_test::matrix<T>(layer.w0.transpose()));
    CHECK_THROWS_WITH(F::forward(op.x, w_transposed, op.bias, layer.ad, o),
                      StartsWith("W0:") && Contains(fan_in_fan_out ? "got 7 x 9" : "got 9 x 7"));
    const auto bias_bad = F::from(vera::vector<T>(vera::vector<T>::Ones(6)));
    CHECK_THROWS_WITH(F::forward(op.x, op.w0, bias_bad, layer.ad, o),
                      StartsWith("bias:") && Contains("7") && Contains("6"));

    auto wrong_destination = F::from(vera_test::matrix<T>(vera_test::matrix<T>::Ones(6, 8)));
    CHECK_THROWS_WITH(F::forward_add(wrong_destination, op.x, op.w0, op.bias, layer.ad, o),
                      StartsWith("destination:") && Contains("6 x 7") && Contains("6 x 8"));
    CHECK((F::to_eigen(wrong_destination).array() == T(1)).all());

    const auto g = F::from(vera_test::random_matrix<T>(6, 7, 53));
    CHECK_THROWS_AS(F::parameter_gradients(g, layer.ad, ctx), vera::state_error);
    (void)F::forward(op.x, op.w0, op.bias, layer.ad, o, &ctx);
    const auto g_bad = F::from(vera_test::random_matrix<T>(5, 7, 54));
    CHECK_THROWS_WITH(F::parameter_gradients(g_bad, layer.ad, ctx), StartsWith("G:"));
    CHECK_THROWS_WITH(F::input_gradient(g_bad, op.w0, layer.ad, ctx, o), StartsWith("G:"));
    auto dx_wrong = F::from(vera_test::matrix<T>(vera_test::matrix<T>::Ones(6, 7)));
    CHECK_THROWS_WITH(F::input_gradient_add(dx_wrong, g, op.w0, layer.ad, ctx, o),
                      StartsWith("destination:"));
    CHECK((F::to_eigen(dx_wrong).array() == T(1)).all());

    auto w_wrong = F::from(vera_test::matrix<T>(layer.w0.transpose()));
    const auto before = F::to_eigen(w_wrong);
    CHECK_THROWS_WITH(F::merge(w_wrong, layer.ad), StartsWith("W0:"));
    CHECK_THROWS_AS(F::unmerge(w_wrong, layer.ad), vera::shape_error);
    CHECK_THROWS_AS(F::safe_merge(w_wrong, layer.ad), vera::shape_error);
    CHECK_THROWS_AS(F::merged_weight(w_wrong, layer.ad), vera::shape_error);
    CHECK_THROWS_WITH(F::add_delta(w_wrong, layer.ad), StartsWith("destination:"));
    CHECK(same_bits(F::to_eigen(w_wrong), before));
  }
}
