// SPDX-License-Identifier: Apache-2.0
// Tests of vera::linear and the per-layer state it keeps: context, workspace, merged flag.
#include <utility>

#include <catch2/catch.hpp>

#include <cstring>
#include <limits>
#include <optional>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using Catch::Matchers::Contains;
using vera_test::compare;
using vera_test::same_bits;

namespace {

// A layer built from the shared test fixture: W0 and bias are copied into the linear.
template <class T>
struct linear_setup {
  linear_setup(bool fan_in_fan_out, bool with_bias, double dropout, vera_test::layer_shape extents)
      : shape(extents),
        fixture(extents, options(fan_in_fan_out, dropout), 31),
        layer(fixture.w0, with_bias ? std::optional<vera::vector<T>>(fixture.bias) : std::nullopt,
              fixture.ad, /*dropout_seed=*/5) {}

  static vera::adapter_options options(bool fan_in_fan_out, double dropout) {
    vera::adapter_options o;
    o.fan_in_fan_out = fan_in_fan_out;
    o.dropout = dropout;
    return o;
  }

  vera_test::layer_shape shape;
  vera_test::test_layer<T> fixture;
  vera::linear<T> layer;
};

template <class T>
vera_test::wide tolerance(const vera_test::layer_shape& s) {
  return vera_test::tolerance_factor<T>(vera_test::rounding_depth(s.rows, s.in, s.out, s.rank));
}

}  // namespace

TEMPLATE_TEST_CASE("linear forward, training forward and backward match the reference",
                   "[adapter][linear]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (bool fan_in_fan_out : {false, true}) {
    for (bool with_bias : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        INFO("fan_in_fan_out " << fan_in_fan_out << ", bias " << with_bias << ", dropout "
                               << dropout);
        const vera_test::layer_shape shape{150, 9, 7, 12};
        linear_setup<T> s(fan_in_fan_out, with_bias, dropout, shape);
        const matrix x = s.fixture.x;
        const vera::vector<T>* bias = with_bias ? &s.fixture.bias : nullptr;

        // Inference never applies dropout.
        matrix y;
        s.layer.forward(x, y);
        {
          const auto v = vera_test::capture(x, s.fixture.w0, bias, s.layer.vera_adapter());
          const auto expected = vera_test::reference_forward(v).y;
          const auto magnitude = vera_test::reference_forward(vera_test::magnitudes(v)).y;
          const auto c = compare(y, expected, magnitude, tolerance<T>(shape));
          INFO("forward: " << c);
          CHECK(c.ok());
        }

        matrix y_train;
        s.layer.forward_train(x, y_train);
        REQUIRE(s.layer.context().ready());
        const auto v = vera_test::capture(x, s.fixture.w0, bias, s.layer.vera_adapter(),
                                          &s.layer.context().mask_key());
        const auto m = vera_test::magnitudes(v);
        {
          const auto c = compare(y_train, vera_test::reference_forward(v).y,
                                 vera_test::reference_forward(m).y, tolerance<T>(shape));
          INFO("forward_train: " << c);
          CHECK(c.ok());
        }

        const matrix g = vera_test::random_matrix<T>(shape.rows, shape.out, 77);
        const auto expected = vera_test::reference_backward(v, g.template cast<vera_test::wide>());
        const auto magnitude =
            vera_test::reference_backward(m, g.cwiseAbs().template cast<vera_test::wide>());
        vera::gradients<T> grads(s.layer.vera_adapter());
        matrix dx;
        s.layer.backward(g, grads, dx);
        const auto cb =
            compare(grads.lambda_b, expected.grad_b, magnitude.grad_b, tolerance<T>(shape));
        const auto cd =
            compare(grads.lambda_d, expected.grad_d, magnitude.grad_d, tolerance<T>(shape));
        const auto cx = compare(dx, expected.grad_x, magnitude.grad_x, tolerance<T>(shape));
        INFO("grad_b: " << cb << "\ngrad_d: " << cd << "\ngrad_x: " << cx);
        CHECK(cb.ok());
        CHECK(cd.ok());
        CHECK(cx.ok());

        // Accumulating mode adds the same amounts on top.
        vera::gradients<T> accumulated = grads;
        matrix dx_accumulated = dx;
        s.layer.backward(g, accumulated, dx_accumulated, vera::assign_mode::accumulate);
        CHECK(compare(accumulated.lambda_b, 2 * expected.grad_b, 2 * magnitude.grad_b,
                      2 * tolerance<T>(shape))
                  .ok());
        CHECK(compare(dx_accumulated, 2 * expected.grad_x, 2 * magnitude.grad_x,
                      2 * tolerance<T>(shape))
                  .ok());
      }
    }
  }
}

TEMPLATE_TEST_CASE("linear merge: same outputs, no training while merged, unmerge restores",
                   "[adapter][linear]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (bool fan_in_fan_out : {false, true}) {
    INFO("fan_in_fan_out " << fan_in_fan_out);
    const vera_test::layer_shape shape{20, 9, 7, 6};
    linear_setup<T> s(fan_in_fan_out, true, 0.0, shape);
    const matrix w0 = s.layer.weight();
    matrix y_adapter, y_merged;
    s.layer.forward(s.fixture.x, y_adapter);

    CHECK_FALSE(s.layer.merged());
    s.layer.merge();
    CHECK(s.layer.merged());
    CHECK_FALSE(same_bits(s.layer.weight(), w0));
    s.layer.forward(s.fixture.x, y_merged);
    const auto v =
        vera_test::capture(s.fixture.x, s.fixture.w0, &s.fixture.bias, std::as_const(s.layer).vera_adapter());
    const auto c =
        compare(y_merged, vera_test::reference_forward(v).y,
                vera_test::reference_forward(vera_test::magnitudes(v)).y, tolerance<T>(shape));
    INFO(c);
    CHECK(c.ok());

    matrix y;
    vera::gradients<T> grads(std::as_const(s.layer).vera_adapter());
    const matrix g = matrix::Ones(shape.rows, shape.out);
    // Writable access while merged would let b or d drift from the ΔW that unmerge() subtracts.
    CHECK_THROWS_AS(s.layer.vera_adapter(), vera::state_error);
    CHECK_THROWS_AS(s.layer.forward_train(s.fixture.x, y), vera::state_error);
    CHECK_THROWS_WITH(s.layer.forward_train(s.fixture.x, y), Contains("merged"));
    CHECK_THROWS_AS(s.layer.backward(g, grads), vera::state_error);
    CHECK_THROWS_AS(s.layer.merge(), vera::state_error);
    CHECK(s.layer.merged());

    s.layer.unmerge();
    CHECK_FALSE(s.layer.merged());
    CHECK_THROWS_AS(s.layer.unmerge(), vera::state_error);
    // Merging and unmerging round once each (half an ulp of |W0| + |ΔW|), and the two ΔW
    // products may differ by their own rounding (rank terms each), so the restored weight is
    // within (2 + 2 rank) eps of |W0| + |ΔW|.
    const auto delta = vera_test::reference_delta(vera_test::magnitudes(v));
    const matrix w0_layout = fan_in_fan_out ? matrix(w0.transpose()) : w0;
    const matrix restored =
        fan_in_fan_out ? matrix(s.layer.weight().transpose()) : s.layer.weight();
    const vera_test::wide_matrix bound =
        w0_layout.cwiseAbs().template cast<vera_test::wide>() + delta;
    CHECK(compare(restored, w0_layout.template cast<vera_test::wide>(), bound,
                  (2 + 2 * shape.rank) *
                      static_cast<vera_test::wide>(std::numeric_limits<T>::epsilon()))
              .ok());
  }
}

TEMPLATE_TEST_CASE("linear merge with a non-finite lambda leaves the layer unmerged and intact",
                   "[adapter][linear]", float, double) {
  using T = TestType;
  linear_setup<T> s(false, true, 0.0, {4, 9, 7, 6});
  const vera_test::matrix<T> w0 = s.layer.weight();
  s.layer.vera_adapter().lambda_d()(2) = std::numeric_limits<T>::quiet_NaN();
  CHECK_THROWS_AS(s.layer.merge(), vera::value_error);
  CHECK_FALSE(s.layer.merged());
  CHECK(same_bits(s.layer.weight(), w0));
}

TEMPLATE_TEST_CASE("linear refuses a base layer that does not match the adapter",
                   "[adapter][linear]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  const vera::projection<T> p(vera::projection_spec{0, 4, 9, 7});
  const vera::adapter<T> ad(p, 9, 7);
  CHECK_THROWS_AS(vera::linear<T>(matrix(9, 7), std::nullopt, ad), vera::shape_error);
  CHECK_THROWS_WITH(vera::linear<T>(matrix(9, 7), std::nullopt, ad),
                    Contains("W0") && Contains("7 x 9") && Contains("9 x 7"));
  CHECK_THROWS_AS(vera::linear<T>(matrix(7, 9), vera::vector<T>(6), ad), vera::shape_error);
  CHECK_THROWS_WITH(vera::linear<T>(matrix(7, 9), vera::vector<T>(6), ad), Contains("bias"));
  CHECK_NOTHROW(vera::linear<T>(matrix::Zero(7, 9), vera::vector<T>::Zero(7), ad));

  vera::adapter_options transposed;
  transposed.fan_in_fan_out = true;
  const vera::adapter<T> conv1d(p, 9, 7, transposed);
  CHECK_THROWS_AS(vera::linear<T>(matrix(7, 9), std::nullopt, conv1d), vera::shape_error);
  CHECK_NOTHROW(vera::linear<T>(matrix::Zero(9, 7), std::nullopt, conv1d));
}

TEMPLATE_TEST_CASE("linear refuses backward before a training forward and wrong inputs",
                   "[adapter][linear]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  linear_setup<T> s(false, false, 0.0, {5, 9, 7, 6});
  vera::gradients<T> grads(s.layer.vera_adapter());
  CHECK_THROWS_AS(s.layer.backward(matrix::Ones(5, 7), grads), vera::state_error);
  matrix y;
  CHECK_THROWS_AS(s.layer.forward(matrix::Ones(5, 8), y), vera::shape_error);
  CHECK_THROWS_WITH(s.layer.forward(matrix::Ones(5, 8), y), Contains("X"));
  s.layer.forward_train(s.fixture.x, y);
  CHECK_THROWS_AS(s.layer.backward(matrix::Ones(4, 7), grads), vera::shape_error);
  CHECK_THROWS_WITH(s.layer.backward(matrix::Ones(4, 7), grads), Contains("G"));
}

TEMPLATE_TEST_CASE("forward_context keeps its buffer and advances the step", "[adapter][context]",
                   float, double) {
  using T = TestType;
  vera::forward_context<T> ctx(42);
  CHECK_FALSE(ctx.ready());
  CHECK(ctx.mask_key().seed == 42);
  auto& first = ctx.begin_step(10, 4, 0.25);
  const T* storage = first.data();
  CHECK(first.rows() == 10);
  CHECK(first.cols() == 4);
  CHECK(ctx.mask_key().step == 0);
  CHECK(ctx.mask_key().probability == 0.25);
  CHECK_FALSE(ctx.ready());
  ctx.finish_step();
  CHECK(ctx.ready());
  CHECK(ctx.rows() == 10);

  auto& second = ctx.begin_step(10, 4, 0.0);
  CHECK(second.data() == storage);  // same size: no reallocation in steady state
  CHECK(ctx.mask_key().step == 1);
  CHECK(ctx.mask_key().probability == 0.0);
  CHECK_FALSE(ctx.ready());
}

TEMPLATE_TEST_CASE("workspace reuses its buffers while the size does not grow",
                   "[adapter][workspace]", float, double) {
  using T = TestType;
  vera::workspace<T> ws;
  for (int slot = 0; slot < 4; ++slot) {
    auto big = ws.get(slot, 20, 30);
    CHECK(big.rows() == 20);
    CHECK(big.cols() == 30);
    const T* storage = big.data();
    CHECK(ws.get(slot, 20, 30).data() == storage);
    CHECK(ws.get(slot, 30, 20).data() == storage);
    auto smaller = ws.get(slot, 7, 3);
    CHECK(smaller.data() == storage);
    CHECK(smaller.rows() == 7);
    CHECK(smaller.cols() == 3);
    CHECK(ws.get(slot, 25, 30).rows() == 25);  // growing is allowed
  }
  // Slots are distinct buffers.
  CHECK(ws.get(0, 4, 4).data() != ws.get(1, 4, 4).data());
}

TEMPLATE_TEST_CASE("gradients are sized for their adapter and start at zero",
                   "[adapter][gradients]", float, double) {
  using T = TestType;
  const vera::projection<T> p(vera::projection_spec{0, 6, 9, 7});
  vera::adapter_options options;
  options.rank = 4;
  const vera::adapter<T> ad(p, 9, 7, options);
  vera::gradients<T> g(ad);
  CHECK(g.lambda_b.size() == 7);
  CHECK(g.lambda_d.size() == 4);
  CHECK((g.lambda_b.array() == T(0)).all());
  CHECK((g.lambda_d.array() == T(0)).all());
  g.lambda_b.setOnes();
  g.lambda_d.setOnes();
  g.set_zero();
  CHECK((g.lambda_b.array() == T(0)).all());
  CHECK((g.lambda_d.array() == T(0)).all());
}

TEMPLATE_TEST_CASE("linear set_order forces the association order of unmerged forwards",
                   "[adapter][linear]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  const vera_test::layer_shape shape{40, 9, 7, 12};
  linear_setup<T> s(false, true, 0.0, shape);
  CHECK(s.layer.forward_order() == vera::order::automatic);
  for (vera::order o : {vera::order::low_rank, vera::order::merged}) {
    s.layer.set_order(o);
    CHECK(s.layer.forward_order() == o);
    matrix y, y_train;
    s.layer.forward(s.fixture.x, y);
    s.layer.forward_train(s.fixture.x, y_train);
    const auto& ad = static_cast<const vera::linear<T>&>(s.layer).vera_adapter();
    const matrix expected = vera::forward(s.fixture.x, s.fixture.w0, s.fixture.bias, ad).with_order(o);
    CHECK(same_bits(y, expected));
    CHECK(same_bits(y_train, expected));
  }
}

TEMPLATE_TEST_CASE("a resumed dropout sequence draws the same masks as an uninterrupted one",
                   "[adapter][linear][dropout]", float, double) {
  using matrix = vera_test::matrix<TestType>;
  const vera_test::layer_shape shape{30, 9, 7, 12};
  linear_setup<TestType> whole(false, true, 0.3, shape), resumed(false, true, 0.3, shape);
  matrix y1, y2, y;
  whole.layer.forward_train(whole.fixture.x, y1);
  whole.layer.forward_train(whole.fixture.x, y2);
  CHECK(whole.layer.context().next_step() == 2);
  CHECK_FALSE(same_bits(y1, y2));  // a new mask per step
  resumed.layer.resume_dropout_at(1);
  resumed.layer.forward_train(resumed.fixture.x, y);
  CHECK(same_bits(y, y2));
  CHECK(resumed.layer.context().next_step() == 2);
}

TEST_CASE("a bfloat16 linear runs the bfloat16 expressions and merges as they do", "[adapter][linear][bfloat16]") {
  using half = Eigen::bfloat16;
  using half_matrix = Eigen::Matrix<half, Eigen::Dynamic, Eigen::Dynamic>;
  for (bool fan_in_fan_out : {false, true}) {
    INFO("fan_in_fan_out " << fan_in_fan_out);
    const vera_test::layer_shape shape{20, 9, 7, 6};
    const vera_test::test_layer<float> fixture(shape, linear_setup<float>::options(fan_in_fan_out, 0.25), 31);
    const half_matrix w0 = fixture.w0.cast<half>();
    const vera::vector<half> bias = fixture.bias.cast<half>();
    const half_matrix x = fixture.x.cast<half>();
    const half_matrix g = vera_test::random_matrix<float>(shape.rows, shape.out, 77).cast<half>();
    vera::linear<float, half> layer(w0, bias, fixture.ad, /*dropout_seed=*/5);
    vera::forward_context<float> ctx(5);

    // Inference, into bfloat16 and (unrounded) float destinations.
    half_matrix y;
    layer.forward(x, y);
    CHECK(same_bits(y, half_matrix(vera::forward(x, w0, bias, fixture.ad))));
    Eigen::MatrixXf y_float;
    layer.forward(x, y_float);
    Eigen::MatrixXf want_float(shape.rows, shape.out);
    vera::forward(x, w0, bias, fixture.ad).assign_to(want_float);
    CHECK(same_bits(y_float, want_float));

    // Training: the same dropout masks as a context of the same seed, the same gradients.
    layer.forward_train(x, y);
    CHECK(same_bits(y, half_matrix(vera::forward(x, w0, bias, fixture.ad).train(ctx))));
    vera::gradients<float> grads(fixture.ad), want(fixture.ad);
    half_matrix dx;
    layer.backward(g, grads, dx);
    want = vera::parameter_gradients(g, fixture.ad, ctx);
    CHECK(same_bits(grads.lambda_b, want.lambda_b));
    CHECK(same_bits(grads.lambda_d, want.lambda_d));
    CHECK(same_bits(dx, half_matrix(vera::input_gradient(g, w0, fixture.ad, ctx))));
    Eigen::MatrixXf dx_float;
    layer.backward(g, grads, dx_float);
    Eigen::MatrixXf want_dx(shape.rows, shape.in);
    vera::input_gradient(g, w0, fixture.ad, ctx).assign_to(want_dx);
    CHECK(same_bits(dx_float, want_dx));

    // Merged: W0 as vera::merge rounds it; the base path accumulates in float32, rounds once.
    half_matrix merged = w0;
    vera::merge(merged, fixture.ad);
    layer.merge();
    CHECK(same_bits(layer.weight(), merged));
    half_matrix y_merged;
    layer.forward(x, y_merged);
    const vera_test::matrix<float> xf = x.cast<float>();
    const vera_test::matrix<float> w0f = w0.cast<float>();
    const vera::vector<float> bias_f = bias.cast<float>();
    auto v = vera_test::capture(xf, w0f, &bias_f, fixture.ad);
    const auto& shared = fixture.ad.shared_projection();
    v.a = shared.a_bfloat16(shape.in, shape.rank).cast<float>().cast<vera_test::wide>();
    v.b = shared.b_bfloat16(shape.out, shape.rank).cast<float>().cast<vera_test::wide>();
    // Rounded: W0 + ΔW, and the output.
    const auto c = compare(y_merged, vera_test::reference_forward(v).y,
                           vera_test::reference_forward(vera_test::magnitudes(v)).y,
                           vera_test::bfloat16_budget(2, vera_test::rounding_depth(shape.rows, shape.in, shape.out, shape.rank)));
    INFO(c);
    CHECK(c.ok());
    CHECK_THROWS_AS(layer.forward_train(x, y), vera::state_error);
    layer.unmerge();
    CHECK_FALSE(layer.merged());
    // A layer forced onto the merged order is refused: bfloat16 runs the low-rank order only.
    layer.set_order(vera::order::merged);
    CHECK_THROWS_AS(layer.forward(x, y), vera::value_error);

    // Bad shapes: a W0 or bias that does not fit the adapter is refused at construction; an X of
    // the wrong width is refused before the destination is touched, merged or not.
    const half_matrix w0_wrong = half_matrix::Zero(w0.rows() + 1, w0.cols());
    CHECK_THROWS_AS((vera::linear<float, half>(w0_wrong, bias, fixture.ad)), vera::shape_error);
    const vera::vector<half> bias_wrong = vera::vector<half>::Zero(bias.size() + 1);
    CHECK_THROWS_AS((vera::linear<float, half>(w0, bias_wrong, fixture.ad)), vera::shape_error);
    layer.set_order(vera::order::low_rank);
    const half_matrix x_wrong = half_matrix::Zero(shape.rows, shape.in + 1);
    const half_matrix y_before = y;
    CHECK_THROWS_AS(layer.forward(x_wrong, y), vera::shape_error);
    layer.merge();
    CHECK_THROWS_AS(layer.forward(x_wrong, y), vera::shape_error);
    CHECK(same_bits(y, y_before));
  }
}
