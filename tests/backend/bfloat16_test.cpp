// SPDX-License-Identifier: Apache-2.0
// Tests of the bfloat16 storage path (float32 accumulation) against the long-double reference.
#include <catch2/catch.hpp>

#include <sstream>
#include <string>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using vera_test::half;
using vera_test::half_matrix;
using vera_test::half_rows;
using vera_test::compare;
using vera_test::layer_shape;
using vera_test::wide;
using vera_test::wide_matrix;

namespace {


using vera_test::bfloat16_budget;

std::string describe(const layer_shape& s, bool fan_in_fan_out, double dropout) {
  std::ostringstream os;
  os << "n " << s.rows << ", in " << s.in << ", out " << s.out << ", rank " << s.rank
     << ", fan_in_fan_out " << fan_in_fan_out << ", dropout " << dropout << ", provider "
     << vera::gemm_provider();
  return os.str();
}

// The layer's values as the bfloat16 path computes with them: X, W0, bias, G rounded to bfloat16,
// A and B rounded to bfloat16, b and d in float32.
struct rounded_layer {
  rounded_layer(const layer_shape& s, bool fan_in_fan_out, double dropout)
      : layer(s, options(fan_in_fan_out, dropout), 7),
        x(layer.x.cast<half>()),
        w0(layer.w0.cast<half>()),
        bias(layer.bias.cast<half>()),
        g(vera_test::random_matrix<float>(s.rows, s.out, 99).cast<half>()) {}

  static vera::adapter_options options(bool fan_in_fan_out, double dropout) {
    vera::adapter_options o;
    o.fan_in_fan_out = fan_in_fan_out;
    o.dropout = dropout;
    return o;
  }

  vera_test::layer_values values(const vera::dropout_key* key) const {
    const vera_test::matrix<float> x_values = x.cast<float>();
    const vera_test::matrix<float> w0_values = w0.cast<float>();
    const vera::vector<float> bias_values = bias.cast<float>();
    auto v = vera_test::capture(x_values, w0_values, &bias_values, layer.ad, key);
    const auto& shared = layer.ad.shared_projection();
    v.a = shared.a_bfloat16(layer.ad.in_features(), layer.ad.rank()).cast<float>().cast<wide>();
    v.b = shared.b_bfloat16(layer.ad.out_features(), layer.ad.rank()).cast<float>().cast<wide>();
    return v;
  }

  vera_test::test_layer<float> layer;
  half_matrix x, w0;
  Eigen::Matrix<half, Eigen::Dynamic, 1> bias;
  half_matrix g;
};

}  // namespace

// X, W0, G and the outputs in storage type Stored (column- or row-major bfloat16): the float32
// accumulators follow the destination's storage order, so both orders take their own paths.
template <class Stored>
void check_forward_backward() {
  for (const layer_shape& s : vera_test::edge_shapes()) {
    for (const bool fan_in_fan_out : {false, true}) {
      for (const double dropout : {0.0, 0.25}) {
        INFO(describe(s, fan_in_fan_out, dropout));
        rounded_layer l(s, fan_in_fan_out, dropout);
        const Stored x = l.x, w0 = l.w0, g_stored = l.g;
        vera::forward_context<float> ctx;
        vera::workspace<float> ws;
        const Stored y = vera::forward(x, w0, l.bias, l.layer.ad).train(ctx).using_workspace(ws);
        Eigen::MatrixXf y_float(s.rows, s.out);
        vera::forward(x, w0, l.bias, l.layer.ad).using_workspace(ws).assign_to(y_float);

        const auto v = l.values(&ctx.mask_key());
        const auto m = vera_test::magnitudes(v);
        const auto want = vera_test::reference_forward(v);
        const auto size = vera_test::reference_forward(m);
        const vera::index depth = vera_test::rounding_depth(s.rows, s.in, s.out, s.rank);
        // Rounded: the masked input (with dropout), P (or P Λd), Λb B Λd, and the bfloat16 output.
        const int masked = dropout > 0.0 ? 1 : 0;
        const auto y_check = compare(y, want.y, size.y, bfloat16_budget(3 + masked, depth));
        INFO("Y (bfloat16): " << y_check);
        CHECK(y_check.ok());
        if (dropout == 0.0) {
          const auto y_float_check = compare(y_float, want.y, size.y, bfloat16_budget(2, depth));
          INFO("Y (float): " << y_float_check);
          CHECK(y_float_check.ok());
        }

        const wide_matrix g = l.g.cast<float>().cast<wide>();
        const auto grads = vera_test::reference_backward(v, g);
        const auto grad_size = vera_test::reference_backward(m, g.cwiseAbs());
        vera::gradients<float> out(l.layer.ad);
        out = vera::parameter_gradients(g_stored, l.layer.ad, ctx).using_workspace(ws);
        // P is rounded once more (masked input, then P) on its way into M = G^T P.
        const auto gb = compare(out.lambda_b, grads.grad_b, grad_size.grad_b, bfloat16_budget(2 + masked, depth));
        INFO("grad_b: " << gb);
        CHECK(gb.ok());
        const auto gd = compare(out.lambda_d, grads.grad_d, grad_size.grad_d, bfloat16_budget(2 + masked, depth));
        INFO("grad_d: " << gd);
        CHECK(gd.ok());

        const Stored dx = vera::input_gradient(g_stored, w0, l.layer.ad, ctx).using_workspace(ws);
        // Rounded: Λb B Λd (or G Λb), T, and the bfloat16 output.
        const auto dx_check = compare(dx, grads.grad_x, grad_size.grad_x, bfloat16_budget(3, depth));
        INFO("grad_X: " << dx_check);
        CHECK(dx_check.ok());
      }
    }
  }
}

TEST_CASE("bfloat16 forward and backward match the reference", "[bfloat16]") {
  SECTION("column-major operands") { check_forward_backward<half_matrix>(); }
  SECTION("row-major operands") { check_forward_backward<half_rows>(); }
}

TEST_CASE("bfloat16 layers refuse the merged order instead of rounding differently", "[bfloat16]") {
  rounded_layer l({9, 8, 7, 4}, false, 0.0);
  half_matrix y(9, 7);
  CHECK_THROWS_AS(y = vera::forward(l.x, l.w0, l.bias, l.layer.ad).with_order(vera::order::merged),
                  vera::value_error);
}

TEST_CASE("bfloat16 add_to accumulates into the destination", "[bfloat16]") {
  rounded_layer l({16, 9, 67, 12}, false, 0.0);
  Eigen::MatrixXf y = Eigen::MatrixXf::Constant(16, 67, 2.0f);
  vera::forward(l.x, l.w0, l.bias, l.layer.ad).add_to(y);
  Eigen::MatrixXf once(16, 67);
  vera::forward(l.x, l.w0, l.bias, l.layer.ad).assign_to(once);
  // The same float32 accumulator plus 2, rounded once: within one rounding of the sum.
  const float bound = std::numeric_limits<float>::epsilon() * (once.cwiseAbs().maxCoeff() + 2.0f);
  CHECK((y.array() - once.array() - 2.0f).abs().maxCoeff() <= bound);
}

// W0 in storage type Stored (column- or row-major bfloat16); ΔW follows its storage order.
template <class Stored>
void check_merges() {
  for (const layer_shape& s : vera_test::edge_shapes()) {
    for (const bool fan_in_fan_out : {false, true}) {
      INFO(describe(s, fan_in_fan_out, 0.0));
      rounded_layer l(s, fan_in_fan_out, 0.0);
      const auto v = l.values(nullptr);
      const wide_matrix delta = vera_test::reference_delta(v);
      const wide_matrix delta_size = vera_test::reference_delta(vera_test::magnitudes(v));
      // In the storage layout: W0 (out x in, or in x out with fan_in_fan_out).
      const wide_matrix w0 = l.w0.cast<float>().cast<wide>();
      const wide_matrix stored_delta = fan_in_fan_out ? wide_matrix(delta.transpose()) : delta;
      const wide_matrix stored_size = fan_in_fan_out ? wide_matrix(delta_size.transpose()) : delta_size;
      const wide_matrix size = w0.cwiseAbs() + stored_size;
      const vera::index depth = s.rank + 4;

      const Stored w0_stored = l.w0;
      Stored merged = w0_stored;
      vera::merge(merged, l.layer.ad);
      // Rounded once: the float32 sum W0 + ΔW.
      const auto merge_check = compare(merged, w0 + stored_delta, size, bfloat16_budget(1, depth));
      INFO("merge: " << merge_check);
      CHECK(merge_check.ok());

      Stored safe = w0_stored;
      vera::safe_merge(safe, l.layer.ad);
      CHECK(vera_test::same_bits(safe, merged));
      const Stored lazy = vera::merged_weight(w0_stored, l.layer.ad);
      CHECK(vera_test::same_bits(lazy, merged));

      vera::unmerge(merged, l.layer.ad);
      const auto unmerge_check = compare(merged, w0, size, bfloat16_budget(2, depth));
      INFO("unmerge: " << unmerge_check);
      CHECK(unmerge_check.ok());
    }
  }
}

TEST_CASE("bfloat16 merge, unmerge and safe merge match the reference", "[bfloat16]") {
  SECTION("column-major W0") { check_merges<half_matrix>(); }
  SECTION("row-major W0") { check_merges<half_rows>(); }
}

TEST_CASE("bfloat16 safe merge leaves W0 untouched when the result is not finite", "[bfloat16]") {
  rounded_layer l({9, 8, 7, 4}, false, 0.0);
  l.layer.ad.lambda_b()(3) = 1e38f;  // ΔW overflows bfloat16's range in row 3
  l.layer.ad.lambda_d().setConstant(1e38f);
  half_matrix w = l.w0;
  CHECK_THROWS_AS(vera::safe_merge(w, l.layer.ad), vera::value_error);
  CHECK(vera_test::same_bits(w, l.w0));
}

TEST_CASE("bfloat16 inputs are refused with clear errors", "[bfloat16]") {
  rounded_layer l({9, 8, 7, 4}, false, 0.0);
  const auto& shared = l.layer.ad.shared_projection();
  CHECK_THROWS_AS(shared.a_bfloat16(shared.max_in() + 1, 4), vera::shape_error);
  CHECK_THROWS_AS(shared.b_bfloat16(7, shared.rank() + 1), vera::rank_error);
  CHECK_THROWS_AS(shared.a_bfloat16(0, 4), vera::value_error);
  // A float destination of the wrong shape is refused before anything is written.
  Eigen::MatrixXf y = Eigen::MatrixXf::Constant(9, 6, 3.0f);
  CHECK_THROWS_WITH(vera::forward(l.x, l.w0, l.bias, l.layer.ad).assign_to(y),
                    Catch::Contains("destination") && Catch::Contains("9 x 7"));
  CHECK((y.array() == 3.0f).all());
  vera::forward_context<float> ctx;
  const half_matrix y_half = vera::forward(l.x, l.w0, l.bias, l.layer.ad).train(ctx);
  REQUIRE(y_half.rows() == 9);
  Eigen::MatrixXf dx = Eigen::MatrixXf::Constant(8, 9, 3.0f);
  CHECK_THROWS_AS(vera::input_gradient(l.g, l.w0, l.layer.ad, ctx).assign_to(dx), vera::shape_error);
  CHECK((dx.array() == 3.0f).all());
  // G with the wrong number of columns is refused when the expression is built.
  const half_matrix g_wrong = half_matrix::Zero(9, 6);
  CHECK_THROWS_AS(vera::parameter_gradients(g_wrong, l.layer.ad, ctx), vera::shape_error);
}
