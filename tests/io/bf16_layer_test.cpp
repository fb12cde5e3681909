// SPDX-License-Identifier: Apache-2.0
// vera's bfloat16 layer against PEFT's outputs for a bfloat16 model (fixtures written by
// tools/make_peft_bf16_layer_fixtures.py with real torch and peft).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <vera/io.hpp>
#include <vera/vera.hpp>

#include "../support/reference.hpp"
#include "io_support.hpp"

namespace {

using float_rows = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using vera_test::bfloat16_budget;
using vera_test::half;
using vera_test::half_rows;
using vera_test::compare;
using vera_test::wide;
using vera_test::wide_matrix;

// A tensor of the fixture as a rows x cols float matrix (bfloat16 values are exact in float).
float_rows tensor(const vera::io::safetensors_file& file, const std::string& name, vera::index rows,
                  vera::index cols) {
  const std::vector<float> values = file.values<float>(name);
  REQUIRE(static_cast<vera::index>(values.size()) == rows * cols);
  return Eigen::Map<const float_rows>(values.data(), rows, cols);
}

vera::index dimension(const vera::io::safetensors_file& file, const std::string& key) {
  return static_cast<vera::index>(std::stoll(file.metadata().at(key)));
}

}  // namespace

TEST_CASE("bfloat16 layers agree with PEFT on a bfloat16 model", "[io][peft][bfloat16]") {
  for (const std::string name : {"small", "wide_rank", "one_row"}) {
    INFO("fixture bf16_layer_" << name);
    const vera::io::safetensors_file file(vera_test::peft_fixtures() / ("bf16_layer_" + name + ".safetensors"));
    const vera::index n = dimension(file, "n"), in = dimension(file, "in"), out = dimension(file, "out"),
                      r = dimension(file, "r");
    const half_rows x = tensor(file, "x", n, in).cast<half>();
    const half_rows w0 = tensor(file, "w0", out, in).cast<half>();
    const half_rows g = tensor(file, "g", n, out).cast<half>();
    const vera::vector<half> bias = tensor(file, "bias", out, 1).col(0).cast<half>();
    // The float32 projection slices and vectors PEFT kept for the bfloat16 model.
    const vera::projection<float> shared(vera::projection_spec{std::stoull(file.metadata().at("seed")), r, in, out},
                                         tensor(file, "vera_A", r, in), tensor(file, "vera_B", out, r));
    vera::adapter<float> ad(shared, in, out);
    ad.set_lambdas(tensor(file, "lambda_b", out, 1).col(0), tensor(file, "lambda_d", r, 1).col(0));

    vera::forward_context<float> ctx;
    const half_rows y = vera::forward(x, w0, bias, ad).train(ctx);
    vera::gradients<float> grads(ad);
    grads = vera::parameter_gradients(g, ad, ctx);
    const half_rows dx = vera::input_gradient(g, w0, ad, ctx);
    half_rows merged = w0;
    vera::merge(merged, ad);

    // Error budgets: both sides are within bfloat16 rounding of the exact result on these
    // operands, so they differ by at most the sum of their budgets. vera rounds A and B (2), the
    // thin operand of each GEMM (1-2) and the output (1); PEFT rounds its base product and output
    // (Y, grad_X: 2 each), keeps the adapter branch and the vector gradients in float32 (0), and
    // rounds the merged weight once. Depth covers the float32 sums.
    const vera_test::matrix<float> x_values = x.cast<float>(), w0_values = w0.cast<float>();
    const vera::vector<float> bias_values = bias.cast<float>();
    const auto v = vera_test::capture(x_values, w0_values, &bias_values, ad);
    const auto m = vera_test::magnitudes(v);
    const wide_matrix g_values = g.cast<float>().cast<wide>();
    const auto size = vera_test::reference_forward(m);
    const auto grad_size = vera_test::reference_backward(m, g_values.cwiseAbs());
    const vera::index depth = vera_test::rounding_depth(n, in, out, r);
    const auto peft = [&](const char* key, vera::index rows, vera::index cols) {
      return wide_matrix(tensor(file, key, rows, cols).cast<wide>());
    };

    const auto y_check = compare(y, peft("y", n, out), size.y, bfloat16_budget(5 + 2, depth));
    INFO("Y: " << y_check);
    CHECK(y_check.ok());
    const auto gb = compare(grads.lambda_b, peft("grad_lambda_b", out, 1), grad_size.grad_b, bfloat16_budget(4, depth));
    INFO("grad_b: " << gb);
    CHECK(gb.ok());
    const auto gd = compare(grads.lambda_d, peft("grad_lambda_d", r, 1), grad_size.grad_d, bfloat16_budget(4, depth));
    INFO("grad_d: " << gd);
    CHECK(gd.ok());
    const auto dx_check = compare(dx, peft("grad_x", n, in), grad_size.grad_x, bfloat16_budget(5 + 2, depth));
    INFO("grad_X: " << dx_check);
    CHECK(dx_check.ok());
    const wide_matrix merged_size = v.w0.cwiseAbs() + vera_test::reference_delta(m);
    const auto merge_check = compare(merged, peft("merged", out, in), merged_size, bfloat16_budget(3 + 1, r + 4));
    INFO("merged: " << merge_check);
    CHECK(merge_check.ok());
  }
}
