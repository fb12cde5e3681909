// SPDX-License-Identifier: Apache-2.0
// Tests of the execution-policy seam: explicit and user-derived CPU tags run the same evaluators.
#include <catch2/catch.hpp>

#include <type_traits>

#include <vera/vera.hpp>

#include "../support/reference.hpp"

using vera_test::same_bits;

namespace {

// A user refinement of the CPU backend with no evaluators of its own, and one more level below.
struct my_cpu : vera::exec::cpu {};
struct my_cpu_variant : my_cpu {};

const vera::order all_orders[] = {vera::order::automatic, vera::order::low_rank,
                                  vera::order::merged};

vera::adapter_options options_for(bool fan_in_fan_out, double dropout) {
  vera::adapter_options options;
  options.fan_in_fan_out = fan_in_fan_out;
  options.dropout = dropout;
  return options;
}

}  // namespace

static_assert(std::is_same_v<vera::exec::default_policy, vera::exec::cpu>);
static_assert(vera::exec::is_cpu_policy<vera::exec::cpu>);
static_assert(vera::exec::is_cpu_policy<my_cpu>);
static_assert(vera::exec::is_cpu_policy<my_cpu_variant>);
static_assert(!vera::exec::is_cpu_policy<vera::exec::cuda>);
static_assert(std::is_empty_v<my_cpu>);

TEMPLATE_TEST_CASE("explicit and derived CPU policies give the default policy's bits",
                   "[backend][policy]", float, double) {
  using T = TestType;
  using matrix = vera_test::matrix<T>;
  for (bool fan_in_fan_out : {false, true}) {
    for (double dropout : {0.0, 0.25}) {
      for (vera::index rows : {3, 200}) {
        INFO("fan_in_fan_out " << fan_in_fan_out << ", dropout " << dropout << ", n " << rows);
        const vera_test::test_layer<T> layer({rows, 9, 7, 6}, options_for(fan_in_fan_out, dropout),
                                             70);
        const matrix& x = layer.x;
        const matrix& w = layer.w0;
        const auto& b = layer.bias;
        const auto& ad = layer.ad;
        for (vera::order o : all_orders) {
          INFO("order " << static_cast<int>(o));
          const matrix y_default = vera::forward(x, w, b, ad).with_order(o);
          const matrix y_cpu = vera::forward(vera::exec::cpu{}, x, w, b, ad).with_order(o);
          const matrix y_mine = vera::forward(my_cpu{}, x, w, b, ad).with_order(o);
          const matrix y_variant =
              vera::forward(my_cpu_variant{}, x, w, vera::no_bias, ad).with_order(o);
          const matrix y_default_no_bias = vera::forward(x, w, vera::no_bias, ad).with_order(o);
          CHECK(same_bits(y_cpu, y_default));
          CHECK(same_bits(y_mine, y_default));
          CHECK(same_bits(y_variant, y_default_no_bias));

          matrix acc_default = matrix::Ones(rows, 7), acc_mine = matrix::Ones(rows, 7);
          vera::forward(x, w, b, ad).with_order(o).add_to(acc_default);
          vera::forward(my_cpu{}, x, w, b, ad).with_order(o).add_to(acc_mine);
          CHECK(same_bits(acc_mine, acc_default));

          // Training: two contexts with the same seed see the same masks.
          vera::forward_context<T> ctx_default(8), ctx_mine(8);
          const matrix t_default = vera::forward(x, w, b, ad).train(ctx_default).with_order(o);
          const matrix t_mine = vera::forward(my_cpu{}, x, w, b, ad).train(ctx_mine).with_order(o);
          CHECK(same_bits(t_mine, t_default));
          CHECK(same_bits(ctx_mine.projected(), ctx_default.projected()));

          const matrix g = vera_test::random_matrix<T>(rows, 7, 71);
          const vera::gradients<T> grads_default = vera::parameter_gradients(g, ad, ctx_default);
          const vera::gradients<T> grads_mine =
              vera::parameter_gradients(my_cpu{}, g, ad, ctx_mine);
          const vera::gradients<T> grads_cpu =
              vera::parameter_gradients(vera::exec::cpu{}, g, ad, ctx_mine);
          CHECK(same_bits(grads_mine.lambda_b, grads_default.lambda_b));
          CHECK(same_bits(grads_mine.lambda_d, grads_default.lambda_d));
          CHECK(same_bits(grads_cpu.lambda_b, grads_default.lambda_b));
          CHECK(same_bits(grads_cpu.lambda_d, grads_default.lambda_d));

          const matrix dx_default = vera::input_gradient(g, w, ad, ctx_default).with_order(o);
          const matrix dx_mine = vera::input_gradient(my_cpu{}, g, w, ad, ctx_mine).with_order(o);
          CHECK(same_bits(dx_mine, dx_default));
        }

        const matrix dw_default = vera::delta_weight(ad);
        const matrix dw_mine = vera::delta_weight<my_cpu>(ad);
        CHECK(same_bits(dw_mine, dw_default));
        const matrix merged_default = vera::merged_weight(w, ad);
        const matrix merged_mine = vera::merged_weight<my_cpu_variant>(w, ad);
        CHECK(same_bits(merged_mine, merged_default));
      }
    }
  }
}

TEST_CASE("the GEMM thread setting picks the small-batch arrangement", "[backend][threads]") {
  using col = vera_test::matrix<float>;
  using row = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  {
    const vera_test::gemm_threads_scope scope(2);
    CHECK(vera::gemm_threads() == 2);
    CHECK(vera::detail::cpu::transposed_small_batch<col>(2));
    CHECK(vera::detail::cpu::transposed_small_batch<col>(64));
    CHECK_FALSE(vera::detail::cpu::transposed_small_batch<col>(1));
    CHECK_FALSE(vera::detail::cpu::transposed_small_batch<col>(65));
    CHECK_FALSE(vera::detail::cpu::transposed_small_batch<row>(16));  // row-major Y is already transposed
  }
  {
    const vera_test::gemm_threads_scope scope(1);
    CHECK(vera::gemm_threads() == 1);
    CHECK_FALSE(vera::detail::cpu::transposed_small_batch<col>(16));
  }
  CHECK(vera::gemm_threads() >= 1);  // 0 asks the GEMM library, which runs at least one thread
  CHECK_THROWS_AS(vera::set_gemm_threads(-1), vera::value_error);
  CHECK_THROWS_WITH(vera::set_gemm_threads(-1),
                    Catch::Contains("threads must be >= 0") && Catch::Contains("got -1"));
  CHECK(vera::gemm_threads() >= 1);  // the rejected value was not stored
}
