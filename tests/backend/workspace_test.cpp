// SPDX-License-Identifier: Apache-2.0
// Tests that the workspace-reusing CPU path computes the same bits as the allocating one.
#include <catch2/catch.hpp>

#include <limits>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using vera_test::compare;
using vera_test::same_bits;

namespace {

vera::adapter_options options_for(bool fan_in_fan_out, double dropout) {
  vera::adapter_options options;
  options.fan_in_fan_out = fan_in_fan_out;
  options.dropout = dropout;
  return options;
}

// Stale contents must never leak into a result: fill every slot with NaN, larger than needed.
template <class T>
void poison(vera::workspace<T>& ws) {
  for (int slot = 0; slot < 4; ++slot) {
    ws.get(slot, 400, 80).setConstant(std::numeric_limits<T>::quiet_NaN());
  }
}

}  // namespace

TEMPLATE_TEST_CASE("workspace path gives the same bits as the allocating path",
                   "[backend][workspace]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  vera::workspace<T> ws;
  poison(ws);
  std::uint32_t seed = 80;
  // One workspace across shapes of different sizes, as a training loop over layers would use it.
  for (const vera_test::layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        INFO("n " << shape.rows << ", in " << shape.in << ", out " << shape.out << ", rank "
                  << shape.rank << ", fan_in_fan_out " << fan_in_fan_out << ", dropout "
                  << dropout);
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed++);
        const matrix g = vera_test::random_matrix<T>(shape.rows, shape.out, seed++);
        for (vera::order o : {vera::order::low_rank, vera::order::merged}) {
          INFO("order " << static_cast<int>(o));
          const auto e = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).with_order(o);
          const matrix y_plain = e;
          const matrix y_ws = e.using_workspace(ws);
          CHECK(same_bits(y_ws, y_plain));

          vera::forward_context<T> ctx_plain(3), ctx_ws(3);
          const matrix t_plain = e.train(ctx_plain);
          const matrix t_ws = e.train(ctx_ws).using_workspace(ws);
          CHECK(same_bits(t_ws, t_plain));
          CHECK(same_bits(ctx_ws.projected(), ctx_plain.projected()));

          const vera::gradients<T> grads_plain = vera::parameter_gradients(g, layer.ad, ctx_plain);
          const vera::gradients<T> grads_ws =
              vera::parameter_gradients(g, layer.ad, ctx_ws).using_workspace(ws);
          CHECK(same_bits(grads_ws.lambda_b, grads_plain.lambda_b));
          CHECK(same_bits(grads_ws.lambda_d, grads_plain.lambda_d));

          const matrix dx_plain =
              vera::input_gradient(g, layer.w0, layer.ad, ctx_plain).with_order(o);
          const matrix dx_ws =
              vera::input_gradient(g, layer.w0, layer.ad, ctx_ws).with_order(o).using_workspace(ws);
          CHECK(same_bits(dx_ws, dx_plain));
        }

        matrix merged_plain = layer.w0, merged_ws = layer.w0;
        vera::safe_merge(merged_plain, layer.ad);
        vera::safe_merge(merged_ws, layer.ad, &ws);
        CHECK(same_bits(merged_ws, merged_plain));

        matrix plain = layer.w0, reused = layer.w0;
        vera::merge(plain, layer.ad);
        vera::merge(reused, layer.ad, &ws);
        CHECK(same_bits(reused, plain));
        vera::unmerge(plain, layer.ad);
        vera::unmerge(reused, layer.ad, &ws);
        CHECK(same_bits(reused, plain));
        const matrix delta_plain = vera::delta_weight(layer.ad);
        const matrix delta_ws = vera::delta_weight(layer.ad).using_workspace(ws);
        CHECK(same_bits(delta_ws, delta_plain));
      }
    }
  }
}

TEMPLATE_TEST_CASE("a reused workspace may change the order, never the result beyond rounding",
                   "[backend][workspace]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  // in = out = 64, r = 8, n = 300: the cost model merges only when the weight buffer is reused.
  const vera_test::layer_shape shape{300, 64, 64, 8};
  const vera_test::test_layer<T> layer(shape, {}, 90);
  REQUIRE(vera::detail::choose_order(vera::order::automatic,
                             vera::detail::forward_costs({300, 64, 64, 8}, false, true),
                             true) == vera::order::merged);
  vera::workspace<T> ws;
  const matrix y_plain = vera::forward(layer.x, layer.w0, layer.bias, layer.ad);
  const matrix y_ws = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).using_workspace(ws);
  const matrix y_merged =
      vera::forward(layer.x, layer.w0, layer.bias, layer.ad).with_order(vera::order::merged);
  CHECK(same_bits(y_ws, y_merged));  // the choice is the cost model's, made visibly

  const auto v = vera_test::capture(layer.x, layer.w0, &layer.bias, layer.ad);
  const auto magnitude = vera_test::reference_forward(vera_test::magnitudes(v)).y;
  const auto factor = 2 * vera_test::tolerance_factor<T>(vera_test::rounding_depth(
                              shape.rows, shape.in, shape.out, shape.rank));
  CHECK(compare(y_ws, y_plain.template cast<vera_test::wide>(), magnitude, factor).ok());
}

TEMPLATE_TEST_CASE("a steady-state training step reuses every buffer", "[backend][workspace]",
                   float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  const vera_test::layer_shape shape{150, 9, 7, 6};
  const vera_test::test_layer<T> layer(shape, options_for(false, 0.25), 95);
  const matrix g = vera_test::random_matrix<T>(shape.rows, shape.out, 96);
  vera::workspace<T> ws;
  vera::forward_context<T> ctx(1);
  vera::gradients<T> grads(layer.ad);
  matrix y(shape.rows, shape.out), dx(shape.rows, shape.in);

  const auto step = [&] {
    y = vera::forward(layer.x, layer.w0, layer.bias, layer.ad).train(ctx).using_workspace(ws);
    grads = vera::parameter_gradients(g, layer.ad, ctx).using_workspace(ws);
    dx = vera::input_gradient(g, layer.w0, layer.ad, ctx).using_workspace(ws);
  };
  step();
  const T* slots[4];
  for (int slot = 0; slot < 4; ++slot) slots[slot] = ws.get(slot, 0, 0).data();
  const T* saved_p = ctx.projected().data();
  const T* y_data = y.data();
  const T* dx_data = dx.data();
  const T* grad_b_data = grads.lambda_b.data();
  step();
  step();
  for (int slot = 0; slot < 4; ++slot) CHECK(ws.get(slot, 0, 0).data() == slots[slot]);
  CHECK(ctx.projected().data() == saved_p);
  CHECK(y.data() == y_data);
  CHECK(dx.data() == dx_data);
  CHECK(grads.lambda_b.data() == grad_b_data);
}
