// SPDX-License-Identifier: Apache-2.0
// bfloat16 xtensor operands with a float adapter: the Eigen front-end's bits on row-major bfloat16.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xview.hpp>

#include "front_ends.hpp"

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using vera_test::layer_shape;
using vera_test::same_bits;

namespace {

using half = Eigen::bfloat16;
using half_rows = Eigen::Matrix<half, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using float_rows = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using xhalf = vera::xt::matrix<half>;

vera::adapter_options options_for(bool fan_in_fan_out, double dropout = 0.0) {
  vera::adapter_options options;
  options.fan_in_fan_out = fan_in_fan_out;
  options.dropout = dropout;
  return options;
}

template <class S, class E>
vera_test::matrix<S> to_eigen(const E& m) {
  const auto rows = static_cast<vera::index>(m.shape()[0]);
  const auto cols = static_cast<vera::index>(m.shape()[1]);
  vera_test::matrix<S> out(rows, cols);
  for (vera::index i = 0; i < out.rows(); ++i) {
    for (vera::index j = 0; j < out.cols(); ++j) out(i, j) = m(i, j);
  }
  return out;
}

xhalf to_xtensor(const half_rows& m) {
  xhalf out = xhalf::from_shape({static_cast<std::size_t>(m.rows()),
                                 static_cast<std::size_t>(m.cols())});
  for (vera::index i = 0; i < m.rows(); ++i) {
    for (vera::index j = 0; j < m.cols(); ++j) out(i, j) = m(i, j);
  }
  return out;
}

/// A float layer's operands rounded to bfloat16, once as row-major Eigen matrices and once as
/// xt::xtensor, holding the same bits.
struct bf16_layer {
  bf16_layer(const layer_shape& s, bool fan_in_fan_out, double dropout, std::uint32_t seed)
      : layer(s, options_for(fan_in_fan_out, dropout), seed),
        x(layer.x.cast<half>()),
        w0(layer.w0.cast<half>()),
        g(vera_test::random_matrix<float>(s.rows, s.out, seed + 11).cast<half>()),
        bias(layer.bias.cast<half>()),
        xt_x(to_xtensor(x)),
        xt_w0(to_xtensor(w0)),
        xt_g(to_xtensor(g)),
        xt_bias(vera::xt::vector<half>::from_shape({static_cast<std::size_t>(s.out)})) {
    std::copy(bias.data(), bias.data() + bias.size(), xt_bias.begin());
  }

  vera_test::test_layer<float> layer;
  half_rows x, w0, g;
  vera::vector<half> bias;
  xhalf xt_x, xt_w0, xt_g;
  vera::xt::vector<half> xt_bias;
};

/// Every result of one front-end on one bfloat16 layer: bfloat16 outputs, and the float32 ones
/// (P, the gradients of b and d, ΔW in float, a bfloat16 forward's unrounded result).
struct results {
  std::vector<std::pair<std::string, vera_test::matrix<half>>> half_values;
  std::vector<std::pair<std::string, vera_test::matrix<float>>> float_values;
};

/// The Eigen front-end on the row-major bfloat16 matrices.
results eigen_results(const bf16_layer& l, bool with_bias, std::uint32_t seed) {
  const vera::adapter<float>& ad = l.layer.ad;
  const vera::index n = l.x.rows();
  const vera::index out = ad.out_features();
  results r;
  const auto keep = [&](const std::string& name, const half_rows& m) {
    r.half_values.emplace_back(name, m);
  };
  const auto keep_float = [&](const std::string& name, const vera_test::matrix<float>& m) {
    r.float_values.emplace_back(name, m);
  };
  const half_rows start = vera_test::random_matrix<float>(n, out, seed).cast<half>();
  for (vera::order o : {vera::order::automatic, vera::order::low_rank}) {
    const std::string order = " order " + std::to_string(static_cast<int>(o));
    vera::forward_context<float> ctx(seed);
    vera::workspace<float> ws;
    vera_test::with_bias_or_not(with_bias, l.bias, [&](const auto& bias) {
      half_rows y(n, out);
      vera::forward(l.x, l.w0, bias, ad).with_order(o).assign_to(y);
      keep("inference" + order, y);
      float_rows y_float(n, out);
      vera::forward(l.x, l.w0, bias, ad).with_order(o).assign_to(y_float);
      keep_float("inference, float32 destination" + order, y_float);
      half_rows added = start;
      vera::forward(l.x, l.w0, bias, ad).with_order(o).add_to(added);
      keep("inference add_to" + order, added);
      vera::forward(l.x, l.w0, bias, ad).with_order(o).train(ctx).using_workspace(ws).assign_to(y);
      keep("training" + order, y);
    });
    keep_float("P" + order, ctx.projected());
    vera::gradients<float> grads;
    grads = vera::parameter_gradients(l.g, ad, ctx);
    keep_float("grad_b" + order, grads.lambda_b);
    keep_float("grad_d" + order, grads.lambda_d);
    grads += vera::parameter_gradients(l.g, ad, ctx).using_workspace(ws);
    keep_float("grad_b accumulated" + order, grads.lambda_b);
    keep_float("grad_d accumulated" + order, grads.lambda_d);
    half_rows dx(n, ad.in_features());
    vera::input_gradient(l.g, l.w0, ad, ctx).with_order(o).assign_to(dx);
    keep("grad_X" + order, dx);
    vera::input_gradient(l.g, l.w0, ad, ctx).with_order(o).add_to(dx);
    keep("grad_X add_to" + order, dx);
  }
  const auto delta = vera::delta_weight(ad);
  half_rows dw(delta.rows(), delta.cols());
  delta.evalTo(dw);
  keep("delta_weight", dw);
  float_rows dw_float(delta.rows(), delta.cols());
  delta.evalTo(dw_float);
  keep_float("delta_weight, float32", dw_float);
  const half_rows merged = vera::merged_weight(l.w0, ad);
  keep("merged_weight", merged);
  half_rows w = l.w0;
  delta.add_to(w);
  keep("delta_weight add_to", w);
  delta.subtract_from(w);
  keep("delta_weight subtract_from", w);
  w = l.w0;
  vera::merge(w, ad);
  keep("merge", w);
  vera::unmerge(w, ad);
  keep("unmerge", w);
  half_rows safe = l.w0;
  vera::safe_merge(safe, ad);
  keep("safe_merge", safe);
  return r;
}

/// The xtensor front-end on the same values in xt::xtensor<bfloat16, 2>.
results xtensor_results(const bf16_layer& l, bool with_bias, std::uint32_t seed) {
  const vera::adapter<float>& ad = l.layer.ad;
  const auto n = static_cast<std::size_t>(l.x.rows());
  const auto out = static_cast<std::size_t>(ad.out_features());
  results r;
  const auto keep = [&](const std::string& name, const xhalf& m) {
    r.half_values.emplace_back(name, to_eigen<half>(m));
  };
  const auto keep_float = [&](const std::string& name, const vera_test::matrix<float>& m) {
    r.float_values.emplace_back(name, m);
  };
  const xhalf start =
      to_xtensor(vera_test::random_matrix<float>(l.x.rows(), ad.out_features(), seed).cast<half>());
  for (vera::order o : {vera::order::automatic, vera::order::low_rank}) {
    const std::string order = " order " + std::to_string(static_cast<int>(o));
    vera::forward_context<float> ctx(seed);
    vera::workspace<float> ws;
    vera_test::with_bias_or_not(with_bias, l.xt_bias, [&](const auto& bias) {
      keep("inference" + order, vera::xt::forward(l.xt_x, l.xt_w0, bias, ad).with_order(o).eval());
      vera::xt::matrix<float> y_float;
      vera::xt::forward(l.xt_x, l.xt_w0, bias, ad).with_order(o).assign_to(y_float);
      keep_float("inference, float32 destination" + order, to_eigen<float>(y_float));
      xhalf added = start;
      vera::xt::forward(l.xt_x, l.xt_w0, bias, ad).with_order(o).add_to(added);
      keep("inference add_to" + order, added);
      xhalf y = xhalf::from_shape({n, out});
      vera::xt::forward(l.xt_x, l.xt_w0, bias, ad)
          .with_order(o)
          .train(ctx)
          .using_workspace(ws)
          .assign_to(y);
      keep("training" + order, y);
    });
    keep_float("P" + order, ctx.projected());
    vera::xt::gradients<float> grads;
    grads = vera::xt::parameter_gradients(l.xt_g, ad, ctx);
    keep_float("grad_b" + order, grads.eigen().lambda_b);
    keep_float("grad_d" + order, grads.eigen().lambda_d);
    grads += vera::xt::parameter_gradients(l.xt_g, ad, ctx).using_workspace(ws);
    keep_float("grad_b accumulated" + order, grads.eigen().lambda_b);
    keep_float("grad_d accumulated" + order, grads.eigen().lambda_d);
    xhalf dx = vera::xt::input_gradient(l.xt_g, l.xt_w0, ad, ctx).with_order(o);
    keep("grad_X" + order, dx);
    vera::xt::input_gradient(l.xt_g, l.xt_w0, ad, ctx).with_order(o).add_to(dx);
    keep("grad_X add_to" + order, dx);
  }
  const auto delta = vera::xt::delta_weight(ad);
  xhalf dw;
  delta.assign_to(dw);
  keep("delta_weight", dw);
  keep_float("delta_weight, float32", to_eigen<float>(delta.eval()));
  keep("merged_weight", vera::xt::merged_weight(l.xt_w0, ad).eval());
  xhalf w = l.xt_w0;
  delta.add_to(w);
  keep("delta_weight add_to", w);
  delta.subtract_from(w);
  keep("delta_weight subtract_from", w);
  w = l.xt_w0;
  vera::xt::merge(w, ad);
  keep("merge", w);
  vera::xt::unmerge(w, ad);
  keep("unmerge", w);
  xhalf safe = l.xt_w0;
  vera::xt::safe_merge(safe, ad);
  keep("safe_merge", safe);
  return r;
}

std::string describe(const layer_shape& s, bool fan_in_fan_out, double dropout) {
  std::ostringstream os;
  os << "n " << s.rows << ", in " << s.in << ", out " << s.out << ", rank " << s.rank
     << ", fan_in_fan_out " << fan_in_fan_out << ", dropout " << dropout;
  return os.str();
}

}  // namespace

TEST_CASE("bfloat16: xtensor results equal the Eigen front-end's on row-major bfloat16, bit for bit",
          "[xtensor][bfloat16][bitwise]") {
  // n = 0 and 1, rank 1, a rank above in, and 300 rows (three dropout tiles).
  const layer_shape shapes[] = {
      {0, 7, 9, 8}, {1, 67, 8, 16}, {9, 8, 7, 1}, {8, 9, 67, 12}, {300, 67, 67, 16}};
  std::uint32_t seed = 1300;
  for (const layer_shape& shape : shapes) {
    for (bool fan_in_fan_out : {false, true}) {
      for (double dropout : {0.0, 0.25}) {
        for (bool with_bias : {false, true}) {
          const bf16_layer l(shape, fan_in_fan_out, dropout, seed);
          const results xt_results = xtensor_results(l, with_bias, seed + 1);
          const results eigen = eigen_results(l, with_bias, seed + 1);
          seed += 2;
          REQUIRE(xt_results.half_values.size() == eigen.half_values.size());
          REQUIRE(xt_results.float_values.size() == eigen.float_values.size());
          for (std::size_t i = 0; i < eigen.half_values.size(); ++i) {
            INFO(describe(shape, fan_in_fan_out, dropout) << ", bias " << with_bias << ": "
                                                          << eigen.half_values[i].first);
            REQUIRE(xt_results.half_values[i].first == eigen.half_values[i].first);
            CHECK(same_bits(xt_results.half_values[i].second, eigen.half_values[i].second));
          }
          for (std::size_t i = 0; i < eigen.float_values.size(); ++i) {
            INFO(describe(shape, fan_in_fan_out, dropout) << ", bias " << with_bias << ": "
                                                          << eigen.float_values[i].first);
            REQUIRE(xt_results.float_values[i].first == eigen.float_values[i].first);
            CHECK(same_bits(xt_results.float_values[i].second, eigen.float_values[i].second));
          }
        }
      }
    }
  }
}

TEST_CASE("bfloat16: lazy and strided xtensor inputs are evaluated once into bfloat16",
          "[xtensor][bfloat16][inputs]") {
  const bf16_layer l({67, 9, 7, 6}, false, 0.25, 1400);
  const vera::adapter<float>& ad = l.layer.ad;
  vera::forward_context<float> ctx(5);
  const xhalf expected = vera::xt::forward(l.xt_x, l.xt_w0, l.xt_bias, ad).train(ctx);
  const auto check = [&](const auto& x, bool copied) {
    vera::forward_context<float> replay(5);
    const xhalf y = vera::xt::forward(x, l.xt_w0, l.xt_bias, ad).train(replay);
    CHECK(same_bits(to_eigen<half>(y), to_eigen<half>(expected)));
    CHECK(same_bits(replay.projected(), ctx.projected()));
    CHECK(vera::xt::detail::input_matrix<half>(x).copied() == copied);
  };
  SECTION("a float tensor cast to bfloat16 lazily (its values are bfloat16's, so exact)") {
    const vera::xt::matrix<float> widened = xt::cast<float>(l.xt_x);
    check(xt::cast<half>(widened), true);
  }
  SECTION("columns of a wider bfloat16 tensor: strided, copied once") {
    xhalf wider = xt::zeros<half>({std::size_t{67}, std::size_t{12}});
    xt::view(wider, xt::all(), xt::range(2, 11)) = l.xt_x;
    check(xt::view(wider, xt::all(), xt::range(2, 11)), true);
  }
  SECTION("rows of a taller bfloat16 tensor: read in place") {
    xhalf taller = xt::zeros<half>({std::size_t{70}, std::size_t{9}});
    xt::view(taller, xt::range(1, 68), xt::all()) = l.xt_x;
    check(xt::view(taller, xt::range(1, 68), xt::all()), false);
  }
  SECTION("a lazy G for the gradients") {
    const vera::xt::matrix<float> widened = xt::cast<float>(l.xt_g);
    const auto lazy_g = xt::cast<half>(widened);
    vera::xt::gradients<float> direct = vera::xt::parameter_gradients(l.xt_g, ad, ctx);
    vera::xt::gradients<float> lazy = vera::xt::parameter_gradients(lazy_g, ad, ctx);
    CHECK(same_bits(direct.eigen().lambda_b, lazy.eigen().lambda_b));
    CHECK(same_bits(direct.eigen().lambda_d, lazy.eigen().lambda_d));
    const xhalf dx = vera::xt::input_gradient(l.xt_g, l.xt_w0, ad, ctx);
    const xhalf dx_lazy = vera::xt::input_gradient(lazy_g, l.xt_w0, ad, ctx);
    CHECK(same_bits(to_eigen<half>(dx_lazy), to_eigen<half>(dx)));
  }
}

TEST_CASE("bfloat16: the merged order is refused, as by the Eigen front-end",
          "[xtensor][bfloat16][errors]") {
  const bf16_layer l({9, 8, 7, 4}, false, 0.0, 1500);
  const vera::adapter<float>& ad = l.layer.ad;
  const auto merged = vera::xt::forward(l.xt_x, l.xt_w0, l.xt_bias, ad).with_order(vera::order::merged);
  CHECK_THROWS_AS(merged.eval(), vera::value_error);
  CHECK_THROWS_WITH(merged.eval(), Contains("low-rank order only"));
  xhalf y = xt::ones<half>({std::size_t{9}, std::size_t{7}});
  CHECK_THROWS_AS(merged.assign_to(y), vera::value_error);
  CHECK(xt::all(xt::equal(y, half(1.0f))));

  vera::forward_context<float> ctx;
  (void)vera::xt::forward(l.xt_x, l.xt_w0, l.xt_bias, ad).train(ctx).eval();
  xhalf dx = xt::ones<half>({std::size_t{9}, std::size_t{8}});
  const auto dx_merged =
      vera::xt::input_gradient(l.xt_g, l.xt_w0, ad, ctx).with_order(vera::order::merged);
  CHECK_THROWS_AS(dx_merged.add_to(dx), vera::value_error);
  CHECK(xt::all(xt::equal(dx, half(1.0f))));
}

TEST_CASE("bfloat16: a destination of the wrong shape is refused and left untouched",
          "[xtensor][bfloat16][errors]") {
  const bf16_layer l({9, 8, 7, 4}, false, 0.0, 1600);
  const vera::adapter<float>& ad = l.layer.ad;
  const auto e = vera::xt::forward(l.xt_x, l.xt_w0, l.xt_bias, ad);

  std::vector<half> storage(9 * 6, half(3.0f));
  auto adapted = xt::adapt(storage, std::array<std::size_t, 2>{9, 6});
  CHECK_THROWS_AS(e.assign_to(adapted), vera::shape_error);
  CHECK_THROWS_WITH(e.assign_to(adapted),
                    StartsWith("destination:") && Contains("9 x 7") && Contains("9 x 6"));
  CHECK(std::all_of(storage.begin(), storage.end(), [](half v) { return v == half(3.0f); }));

  xhalf y = xt::ones<half>({std::size_t{9}, std::size_t{6}});
  CHECK_THROWS_AS(e.add_to(y), vera::shape_error);
  REQUIRE(y.shape()[1] == 6);
  CHECK(xt::all(xt::equal(y, half(1.0f))));

  xhalf wider = xt::ones<half>({std::size_t{9}, std::size_t{9}});
  CHECK_THROWS_WITH(e.assign_to(xt::view(wider, xt::all(), xt::range(1, 8))),
                    StartsWith("destination:") && Contains("strides (9, 1)"));
  CHECK(xt::all(xt::equal(wider, half(1.0f))));

  xhalf w_wrong = to_xtensor(half_rows(l.w0.transpose()));
  const vera_test::matrix<half> before = to_eigen<half>(w_wrong);
  CHECK_THROWS_WITH(vera::xt::merge(w_wrong, ad), StartsWith("W0:"));
  CHECK_THROWS_AS(vera::xt::safe_merge(w_wrong, ad), vera::shape_error);
  CHECK_THROWS_WITH(vera::xt::delta_weight(ad).add_to(w_wrong), StartsWith("destination:"));
  CHECK(same_bits(to_eigen<half>(w_wrong), before));
}
