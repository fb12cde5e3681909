// SPDX-License-Identifier: Apache-2.0
// What only the xtensor front-end has: bitwise agreement with Eigen, layouts, lazy inputs, destinations, views.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xvectorize.hpp>
#include <xtensor/xview.hpp>

#include "front_ends.hpp"

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using vera_test::layer_shape;
using vera_test::same_bits;

namespace {

vera::adapter_options options_for(bool fan_in_fan_out, double dropout = 0.0) {
  vera::adapter_options options;
  options.fan_in_fan_out = fan_in_fan_out;
  options.dropout = dropout;
  return options;
}

/// Every output of the front-end F for one layer, as Eigen matrices in a fixed order.
template <class F>
std::vector<std::pair<std::string, vera_test::matrix<typename F::scalar>>> everything(
    const vera_test::test_layer<typename F::scalar>& layer, bool with_bias, std::uint32_t seed) {
  using T = typename F::scalar;
  using matrix = vera_test::matrix<T>;
  const vera_test::front_layer<F> op(layer);
  std::vector<std::pair<std::string, matrix>> out;
  const auto g = F::from(vera_test::random_matrix<T>(layer.x.rows(), layer.ad.out_features(), seed));
  for (vera::order o : {vera::order::automatic, vera::order::low_rank, vera::order::merged}) {
    const std::string order = " order " + std::to_string(static_cast<int>(o));
    vera::forward_context<T> ctx(seed);
    vera_test::with_bias_or_not(with_bias, op.bias, [&](const auto& bias) {
      out.emplace_back("inference" + order, F::to_eigen(F::forward(op.x, op.w0, bias, layer.ad, o)));
      out.emplace_back("training" + order,
                       F::to_eigen(F::forward(op.x, op.w0, bias, layer.ad, o, &ctx)));
    });
    out.emplace_back("P" + order, ctx.projected());
    const vera::gradients<T> grads = F::parameter_gradients(g, layer.ad, ctx);
    out.emplace_back("grad_b" + order, grads.lambda_b);
    out.emplace_back("grad_d" + order, grads.lambda_d);
    out.emplace_back("grad_X" + order, F::to_eigen(F::input_gradient(g, op.w0, layer.ad, ctx, o)));
  }
  out.emplace_back("delta_weight", F::to_eigen(F::delta_weight(layer.ad)));
  out.emplace_back("merged_weight", F::to_eigen(F::merged_weight(op.w0, layer.ad)));
  auto w = op.w0;
  F::merge(w, layer.ad);
  out.emplace_back("merge", F::to_eigen(w));
  F::unmerge(w, layer.ad);
  out.emplace_back("unmerge", F::to_eigen(w));
  auto safe = op.w0;
  F::safe_merge(safe, layer.ad);
  out.emplace_back("safe_merge", F::to_eigen(safe));
  return out;
}

template <class T>
vera_test::matrix<T> as_eigen(const vera::xt::matrix<T>& m) {
  return vera_test::xtensor_front<T>::to_eigen(m);
}

}  // namespace

TEMPLATE_TEST_CASE("xtensor results equal the Eigen front-end's on row-major storage, bit for bit",
                   "[xtensor][bitwise]", float, double) {
  using T = TestType;
  std::uint32_t seed = 900;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed);
        const auto xt_results = everything<vera_test::xtensor_front<T>>(layer, fan_in_fan_out, seed + 1);
        const auto eigen_results =
            everything<vera_test::eigen_row_front<T>>(layer, fan_in_fan_out, seed + 1);
        seed += 2;
        REQUIRE(xt_results.size() == eigen_results.size());
        for (std::size_t i = 0; i < xt_results.size(); ++i) {
          INFO("n " << shape.rows << ", in " << shape.in << ", out " << shape.out << ", rank "
                    << shape.rank << ", fan_in_fan_out " << fan_in_fan_out << ", dropout "
                    << dropout << ": " << xt_results[i].first);
          CHECK(same_bits(xt_results[i].second, eigen_results[i].second));
        }
      }
    }
  }
}

// Not a check (both front-ends are held to the reference's budget by front_end_test.cpp): prints
// how far xtensor results sit from the Eigen front-end on column-major storage, whose GEMMs
// block the transposed problem. Run with `vera_test_xtensor "[.report]"`.
TEMPLATE_TEST_CASE("report: xtensor against the Eigen front-end on column-major storage",
                   "[.report]", float, double) {
  using T = TestType;
  std::uint32_t seed = 900;
  double worst = 0.0;
  std::size_t differing = 0;
  std::size_t total = 0;
  std::string where;
  for (const layer_shape& shape : vera_test::edge_shapes()) {
    for (bool fan_in_fan_out : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        const vera_test::test_layer<T> layer(shape, options_for(fan_in_fan_out, dropout), seed);
        const auto a = everything<vera_test::xtensor_front<T>>(layer, fan_in_fan_out, seed + 1);
        const auto b = everything<vera_test::eigen_front<T>>(layer, fan_in_fan_out, seed + 1);
        seed += 2;
        for (std::size_t i = 0; i < a.size(); ++i) {
          if (a[i].second.size() == 0) continue;
          total += static_cast<std::size_t>(a[i].second.size());
          differing += static_cast<std::size_t>((a[i].second.array() != b[i].second.array()).count());
          // Differences in units of eps times the output's largest magnitude: near-zero elements
          // that come out of cancellation make per-element ulp counts meaningless.
          const double scale = static_cast<double>(b[i].second.cwiseAbs().maxCoeff()) *
                               static_cast<double>(std::numeric_limits<T>::epsilon());
          const double d =
              static_cast<double>((a[i].second - b[i].second).cwiseAbs().maxCoeff()) / scale;
          if (d > worst) {
            worst = d;
            where = a[i].first + " at n " + std::to_string(shape.rows) + ", in " +
                    std::to_string(shape.in) + ", out " + std::to_string(shape.out) + ", rank " +
                    std::to_string(shape.rank);
          }
        }
      }
    }
  }
  WARN((sizeof(T) == 4 ? "float" : "double")
       << ": " << differing << " of " << total << " elements differ; largest difference "
       << worst << " eps x the output's largest magnitude (" << where << ")");
}

TEMPLATE_TEST_CASE("every kind of xtensor input gives the same bits", "[xtensor][inputs]", float,
                   double) {
  using T = TestType;
  using xmatrix = vera::xt::matrix<T>;
  using F = vera_test::xtensor_front<T>;
  const vera_test::test_layer<T> layer({150, 9, 7, 6}, options_for(false, 0.25), 31);
  const vera_test::front_layer<F> op(layer);
  const std::size_t n = 150, in = 9;
  vera::forward_context<T> ctx(5);
  const xmatrix expected = vera::xt::forward(op.x, op.w0, op.bias, layer.ad).train(ctx);
  const auto check = [&](const auto& x, bool copied) {
    vera::forward_context<T> replay(5);
    const xmatrix y = vera::xt::forward(x, op.w0, op.bias, layer.ad).train(replay);
    CHECK(same_bits(as_eigen(y), as_eigen(expected)));
    CHECK(same_bits(replay.projected(), ctx.projected()));
    CHECK(vera::xt::detail::input_matrix<T>(x).copied() == copied);
  };

  SECTION("xt::xarray") { check(xt::xarray<T>(op.x), false); }
  SECTION("column-major xt::xtensor, copied once") {
    xt::xtensor<T, 2, xt::layout_type::column_major> column_major = op.x;
    check(column_major, true);
  }
  SECTION("adaptor over a std::vector") {
    std::vector<T> storage(op.x.begin(), op.x.end());
    check(xt::adapt(storage, std::array<std::size_t, 2>{n, in}), false);
  }
  SECTION("rows of a larger tensor: contiguous, read in place") {
    xmatrix larger = xt::zeros<T>({n + 4, in});
    xt::view(larger, xt::range(2, n + 2), xt::all()) = op.x;
    check(xt::view(larger, xt::range(2, n + 2), xt::all()), false);
  }
  SECTION("columns of a wider tensor: strided, copied once") {
    xmatrix wider = xt::zeros<T>({n, in + 3});
    xt::view(wider, xt::all(), xt::range(1, in + 1)) = op.x;
    check(xt::view(wider, xt::all(), xt::range(1, in + 1)), true);
  }
  SECTION("a lazy expression: doubling is exact, so halving it back must give the same bits") {
    const xmatrix doubled = op.x * T(2);
    check(doubled / T(2), true);
  }
}

TEMPLATE_TEST_CASE("a lazy xtensor input is evaluated once per evaluation, not per use",
                   "[xtensor][inputs]", float, double) {
  using T = TestType;
  using F = vera_test::xtensor_front<T>;
  const vera_test::test_layer<T> layer({67, 9, 7, 6}, options_for(false, 0.25), 32);
  const vera_test::front_layer<F> op(layer);
  long calls = 0;
  auto counted = xt::vectorize([&calls](T v) {
    ++calls;
    return v;
  });
  // The low-rank order reads X twice (X W0^T and X A^T), dropout a third time.
  vera::forward_context<T> ctx(3);
  const vera::xt::matrix<T> y = vera::xt::forward(counted(op.x), op.w0, op.bias, layer.ad)
                                    .train(ctx)
                                    .with_order(vera::order::low_rank);
  CHECK(calls == 67 * 9);

  // grad_X reads G twice (G W0 and G Λb B Λd).
  calls = 0;
  const vera::xt::matrix<T> g = vera_test::xtensor_front<T>::from(vera_test::random_matrix<T>(67, 7, 33));
  const vera::xt::matrix<T> dx =
      vera::xt::input_gradient(counted(g), op.w0, layer.ad, ctx).with_order(vera::order::low_rank);
  CHECK(calls == 67 * 7);
  const vera::xt::matrix<T> dx_direct =
      vera::xt::input_gradient(g, op.w0, layer.ad, ctx).with_order(vera::order::low_rank);
  CHECK(same_bits(as_eigen(dx), as_eigen(dx_direct)));
}

TEMPLATE_TEST_CASE("destinations: containers resize, other shapes and layouts are refused",
                   "[xtensor][destinations]", float, double) {
  using T = TestType;
  using xmatrix = vera::xt::matrix<T>;
  using F = vera_test::xtensor_front<T>;
  const vera_test::test_layer<T> layer({5, 7, 7, 4}, options_for(false), 34);
  const vera_test::front_layer<F> op(layer);
  const auto e = vera::xt::forward(op.x, op.w0, op.bias, layer.ad);
  const xmatrix expected = e;

  SECTION("an xt::xtensor or xt::xarray of another shape is resized") {
    xmatrix y = xt::ones<T>({2, 3});
    e.assign_to(y);
    CHECK(same_bits(as_eigen(y), as_eigen(expected)));
    xt::xarray<T> z = xt::ones<T>({2, 3, 4});
    e.assign_to(z);
    REQUIRE(z.dimension() == 2);
    CHECK(same_bits(as_eigen(xmatrix(z)), as_eigen(expected)));
  }
  SECTION("rows of a larger tensor are written in place, the rest untouched") {
    xmatrix larger = xt::ones<T>({9, 7});
    e.assign_to(xt::view(larger, xt::range(2, 7), xt::all()));
    CHECK(same_bits(as_eigen(xmatrix(xt::view(larger, xt::range(2, 7), xt::all()))),
                    as_eigen(expected)));
    CHECK(xt::all(xt::equal(xt::view(larger, xt::range(0, 2), xt::all()), T(1))));
    CHECK(xt::all(xt::equal(xt::view(larger, xt::range(7, 9), xt::all()), T(1))));
  }
  SECTION("an adaptor of the wrong shape is refused and not written") {
    std::vector<T> storage(12, T(1));
    auto adapted = xt::adapt(storage, std::array<std::size_t, 2>{3, 4});
    CHECK_THROWS_AS(e.assign_to(adapted), vera::shape_error);
    CHECK_THROWS_WITH(e.assign_to(adapted), StartsWith("destination:") && Contains("5 x 7") &&
                                                Contains("3 x 4"));
    CHECK(std::all_of(storage.begin(), storage.end(), [](T v) { return v == T(1); }));
  }
  SECTION("strided and column-major destinations are refused and not written") {
    xmatrix wider = xt::ones<T>({5, 9});
    CHECK_THROWS_WITH(e.assign_to(xt::view(wider, xt::all(), xt::range(1, 8))),
                      StartsWith("destination:") && Contains("strides (9, 1)"));
    CHECK_THROWS_AS(e.add_to(xt::view(wider, xt::all(), xt::range(1, 8))), vera::shape_error);
    CHECK(xt::all(xt::equal(wider, T(1))));
    xt::xtensor<T, 2, xt::layout_type::column_major> column_major = xt::ones<T>({5, 7});
    CHECK_THROWS_WITH(e.assign_to(column_major), Contains("row-major"));
  }
  SECTION("add_to never resizes") {
    xmatrix y = xt::ones<T>({5, 6});
    CHECK_THROWS_WITH(e.add_to(y), StartsWith("destination:") && Contains("5 x 6"));
    CHECK(y.shape()[1] == 6);
  }
  SECTION("a destination that is also an operand") {
    // Same shape (in = out): evaluated in place, which the aliasing rule refuses.
    xmatrix x = op.x;
    CHECK_THROWS_AS(vera::xt::forward(x, op.w0, op.bias, layer.ad).assign_to(x),
                    vera::aliasing_error);
    // Conversion evaluates into fresh memory first, so `x = forward(x, ...)` is fine.
    x = vera::xt::forward(x, op.w0, op.bias, layer.ad);
    CHECK(same_bits(as_eigen(x), as_eigen(expected)));
  }
}

TEMPLATE_TEST_CASE("operands of the wrong dimension count are refused", "[xtensor][errors]", float,
                   double) {
  using T = TestType;
  using F = vera_test::xtensor_front<T>;
  const vera_test::test_layer<T> layer({5, 7, 6, 4}, options_for(false), 35);
  const vera_test::front_layer<F> op(layer);
  const xt::xarray<T> x3 = xt::zeros<T>({5, 7, 1});
  CHECK_THROWS_AS(vera::xt::forward(x3, op.w0, op.bias, layer.ad), vera::shape_error);
  CHECK_THROWS_WITH(vera::xt::forward(x3, op.w0, op.bias, layer.ad),
                    StartsWith("X:") && Contains("2-D") && Contains("3 dimensions"));
  const xt::xarray<T> bias2 = xt::zeros<T>({1, 6});
  CHECK_THROWS_WITH(vera::xt::forward(op.x, op.w0, bias2, layer.ad),
                    StartsWith("bias:") && Contains("1-D"));
  xt::xarray<T> w1 = xt::zeros<T>({42});
  CHECK_THROWS_WITH(vera::xt::merge(w1, layer.ad), StartsWith("W0:") && Contains("2-D"));
  vera::forward_context<T> ctx;
  (void)vera::xt::forward(op.x, op.w0, op.bias, layer.ad).train(ctx).eval();
  CHECK_THROWS_WITH(vera::xt::parameter_gradients(x3, layer.ad, ctx), StartsWith("G:"));
}

TEMPLATE_TEST_CASE("the operations take xtensor operands under their vera:: names", "[xtensor][names]", float,
                   double) {
  using T = TestType;
  using F = vera_test::xtensor_front<T>;
  using matrix = typename F::matrix;
  const vera_test::test_layer<T> layer({5, 7, 6, 4}, options_for(false), 36);
  const vera_test::front_layer<F> op(layer);
  const auto& ad = layer.ad;
  const matrix y = vera::forward(op.x, op.w0, op.bias, ad);
  CHECK(same_bits(as_eigen(y), as_eigen(matrix(vera::xt::forward(op.x, op.w0, op.bias, ad)))));
  vera::forward_context<T> ctx;
  (void)vera::forward(vera::exec::cpu{}, op.x, op.w0, op.bias, ad).train(ctx).eval();
  const auto g = F::from(vera_test::random_matrix<T>(5, 6, 37));
  const vera::gradients<T> grads = vera::parameter_gradients(g, ad, ctx).eval().eigen();
  const vera::gradients<T> xt_grads = vera::xt::parameter_gradients(g, ad, ctx).eval().eigen();
  CHECK(same_bits(grads.lambda_b, xt_grads.lambda_b));
  CHECK(same_bits(grads.lambda_d, xt_grads.lambda_d));
  const matrix dx = vera::input_gradient(g, op.w0, ad, ctx);
  CHECK(same_bits(as_eigen(dx), as_eigen(matrix(vera::xt::input_gradient(g, op.w0, ad, ctx)))));
  const matrix merged = vera::merged_weight(op.w0, ad);
  CHECK(same_bits(as_eigen(merged), as_eigen(matrix(vera::xt::merged_weight(op.w0, ad)))));
  auto w = op.w0;
  vera::merge(w, ad);
  CHECK(same_bits(as_eigen(w), as_eigen(merged)));
  vera::unmerge(w, ad);
  vera::safe_merge(w, ad);
  auto xt_w = op.w0;
  vera::xt::merge(xt_w, ad);
  vera::xt::unmerge(xt_w, ad);
  vera::xt::safe_merge(xt_w, ad);
  CHECK(same_bits(as_eigen(w), as_eigen(xt_w)));

  // The same checks, the same messages, nothing written.
  const xt::xarray<T> x3 = xt::zeros<T>({5, 7, 1});
  CHECK_THROWS_WITH(vera::forward(x3, op.w0, op.bias, ad), StartsWith("X:") && Contains("2-D"));
  const matrix wrong_w0 = xt::zeros<T>({6, 8});
  CHECK_THROWS_AS(vera::forward(op.x, wrong_w0, op.bias, ad), vera::shape_error);
  CHECK_THROWS_WITH(vera::input_gradient(g, wrong_w0, ad, ctx), StartsWith("W0:"));
  CHECK_THROWS_WITH(vera::parameter_gradients(x3, ad, ctx), StartsWith("G:"));
  matrix wrong = xt::ones<T>({7, 6});
  const matrix before = wrong;
  CHECK_THROWS_AS(vera::merge(wrong, ad), vera::shape_error);
  CHECK_THROWS_AS(vera::safe_merge(wrong, ad), vera::shape_error);
  CHECK_THROWS_AS(vera::merged_weight(wrong, ad), vera::shape_error);
  CHECK(same_bits(as_eigen(wrong), as_eigen(before)));
}

TEMPLATE_TEST_CASE("views of the projection and of the trainable vectors", "[xtensor][views]",
                   float, double) {
  using T = TestType;
  vera_test::test_layer<T> layer({3, 9, 7, 5}, options_for(false), 36);
  const vera::projection<T>& shared = layer.projection;

  const auto a = vera::xt::projection_a(layer.ad);
  const auto b = vera::xt::projection_b(layer.ad);
  REQUIRE(a.shape()[0] == 5);
  REQUIRE(a.shape()[1] == 9);
  REQUIRE(b.shape()[0] == 7);
  REQUIRE(b.shape()[1] == 5);
  CHECK(same_bits(as_eigen(vera::xt::matrix<T>(a)), vera_test::matrix<T>(layer.ad.a())));
  CHECK(same_bits(as_eigen(vera::xt::matrix<T>(b)), vera_test::matrix<T>(layer.ad.b())));
  CHECK(same_bits(as_eigen(vera::xt::matrix<T>(vera::xt::projection_a(shared))),
                  vera_test::matrix<T>(shared.a())));
  CHECK(same_bits(as_eigen(vera::xt::matrix<T>(vera::xt::projection_b(shared))),
                  vera_test::matrix<T>(shared.b())));
  // A slice is read in place when handed back to vera (rows are contiguous only when in = max_in).
  CHECK(vera::xt::detail::input_matrix<T>(vera::xt::projection_a(shared)).copied() == false);

  const vera::vector<T> b_before = layer.ad.lambda_b();
  vera::xt::lambda_b(layer.ad) *= T(2);
  CHECK(same_bits(layer.ad.lambda_b(), vera::vector<T>(2 * b_before)));
  vera::xt::lambda_d(layer.ad) = xt::zeros<T>({5});
  CHECK((layer.ad.lambda_d().array() == T(0)).all());
  const vera::adapter<T>& read_only = layer.ad;
  CHECK(vera::xt::lambda_b(read_only)(3) == layer.ad.lambda_b()(3));

  vera::xt::gradients<T> grads(layer.ad);
  grads.lambda_b() = xt::ones<T>({7});
  grads.lambda_d()(2) = T(3);
  CHECK((grads.eigen().lambda_b.array() == T(1)).all());
  CHECK(grads.eigen().lambda_d(2) == T(3));
  const vera::xt::gradients<T>& const_grads = grads;
  CHECK(const_grads.lambda_d()(2) == T(3));
}

TEMPLATE_TEST_CASE("stored xtensor expressions hold temporaries and stay lazy",
                   "[xtensor][lifetime]", float, double) {
  using T = TestType;
  using xmatrix = vera::xt::matrix<T>;
  using F = vera_test::xtensor_front<T>;
  const vera_test::test_layer<T> layer({10, 9, 7, 6}, options_for(false), 37);
  vera_test::front_layer<F> op(layer);

  // The xfunction and the container are temporaries: the expression holds them by value.
  auto doubled_input = vera::xt::forward(op.x * T(2), op.w0, op.bias, layer.ad);
  auto copied_weight = vera::xt::forward(op.x, xmatrix(op.w0), op.bias, layer.ad);
  const xmatrix doubled = op.x * T(2);
  CHECK(same_bits(as_eigen(doubled_input.eval()),
                  as_eigen(xmatrix(vera::xt::forward(doubled, op.w0, op.bias, layer.ad)))));
  CHECK(same_bits(as_eigen(copied_weight.eval()),
                  as_eigen(xmatrix(vera::xt::forward(op.x, op.w0, op.bias, layer.ad)))));

  // Lazy: the expression reads X when evaluated.
  const xmatrix before = doubled_input.eval();
  op.x *= T(2);
  CHECK(same_bits(as_eigen(copied_weight.eval()), as_eigen(before)));
}

TEMPLATE_TEST_CASE("workspaces change where scratch lives, not the bits", "[xtensor][workspace]",
                   float, double) {
  using T = TestType;
  using xmatrix = vera::xt::matrix<T>;
  using F = vera_test::xtensor_front<T>;
  const vera_test::test_layer<T> layer({40, 9, 7, 6}, options_for(true, 0.25), 38);
  const vera_test::front_layer<F> op(layer);
  const xmatrix g = F::from(vera_test::random_matrix<T>(40, 7, 39));
  vera::workspace<T> ws;
  vera::forward_context<T> ctx_a(4);
  vera::forward_context<T> ctx_b(4);
  const xmatrix y_a = vera::xt::forward(op.x, op.w0, op.bias, layer.ad).train(ctx_a);
  const xmatrix y_b = vera::xt::forward(op.x, op.w0, op.bias, layer.ad).train(ctx_b).using_workspace(ws);
  CHECK(same_bits(as_eigen(y_a), as_eigen(y_b)));
  const vera::xt::gradients<T> grads_a = vera::xt::parameter_gradients(g, layer.ad, ctx_a);
  const vera::xt::gradients<T> grads_b =
      vera::xt::parameter_gradients(g, layer.ad, ctx_b).using_workspace(ws);
  CHECK(same_bits(grads_a.eigen().lambda_b, grads_b.eigen().lambda_b));
  CHECK(same_bits(grads_a.eigen().lambda_d, grads_b.eigen().lambda_d));
  const xmatrix dx_a = vera::xt::input_gradient(g, op.w0, layer.ad, ctx_a);
  const xmatrix dx_b = vera::xt::input_gradient(g, op.w0, layer.ad, ctx_b).using_workspace(ws);
  CHECK(same_bits(as_eigen(dx_a), as_eigen(dx_b)));
  xmatrix w_a = op.w0;
  xmatrix w_b = op.w0;
  vera::xt::merge(w_a, layer.ad);
  vera::xt::merge(w_b, layer.ad, &ws);
  CHECK(same_bits(as_eigen(w_a), as_eigen(w_b)));
  const xmatrix dw = vera::xt::delta_weight(layer.ad).using_workspace(ws);
  CHECK(same_bits(as_eigen(dw), as_eigen(xmatrix(vera::xt::delta_weight(layer.ad)))));
}
