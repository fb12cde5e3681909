// SPDX-License-Identifier: Apache-2.0
// Tests of sibling groups: against each sibling run through the single-adapter API, by finite
// differences, and the errors at the boundary.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include <vera/multi.hpp>

#include "../support/gemm_threads_scope.hpp"
#include "loop_reference.hpp"

using multi_test::matrix;
using multi_test::relative_gap;
using multi_test::vec;

namespace {

template <class T>
using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class A, class B>
bool same_bits(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (vera::index j = 0; j < a.cols(); ++j) {
    for (vera::index i = 0; i < a.rows(); ++i) {
      const typename A::Scalar x = a(i, j);
      const typename B::Scalar y = b(i, j);
      static_assert(sizeof(x) == sizeof(y), "same_bits: same scalar size");
      if (std::memcmp(&x, &y, sizeof(x)) != 0) return false;
    }
  }
  return true;
}

/// q/k/v-like siblings with differing out_features and storage: q column-major with a bias,
/// k row-major and stored in x out (fan_in_fan_out) with a bias, v column-major without bias.
template <class T>
struct trio {
  static constexpr vera::index in = 23, rank = 11;
  static constexpr vera::index out_q = 19, out_k = 8, out_v = 31;

  explicit trio(double dropout = 0.0, vera::index in_features = in)
      : shared({3, rank + 3, in_features + 4, out_v + 2, vera::generator::philox}),
        q(shared, in_features, out_q, options(11, dropout, false)),
        k(shared, in_features, out_k, options(12, dropout, true)),
        v(shared, in_features, out_v, options(13, dropout, false)),
        wq(multi_test::random_matrix<T>(out_q, in_features, 21)),
        wk(multi_test::random_matrix<T>(in_features, out_k, 22)),
        wv(multi_test::random_matrix<T>(out_v, in_features, 23)),
        bq(multi_test::random_matrix<T>(out_q, 1, 24)),
        bk(multi_test::random_matrix<T>(out_k, 1, 25)) {
    // b = 1 from the random init; make each sibling's b distinct as well.
    q.lambda_b() += multi_test::random_matrix<T>(out_q, 1, 31, 0.5);
    k.lambda_b() += multi_test::random_matrix<T>(out_k, 1, 32, 0.5);
    v.lambda_b() += multi_test::random_matrix<T>(out_v, 1, 33, 0.5);
  }
  static vera::adapter_options options(std::uint64_t seed, double dropout, bool fan_in_fan_out) {
    vera::adapter_options o = multi_test::random_options(seed);
    o.dropout = dropout;
    o.fan_in_fan_out = fan_in_fan_out;
    return o;
  }
  auto group() const {
    return vera::siblings(vera::sibling(wq, bq, q), vera::sibling(wk, bk, k), vera::sibling(wv, vera::no_bias, v));
  }

  /// A random X (rows x in) and each sibling's G (rows x out_i), from seeds first, first + 1, ...
  struct batch {
    matrix<T> x, gq, gk, gv;
  };
  static batch random_batch(vera::index rows, std::uint32_t first) {
    return {multi_test::random_matrix<T>(rows, in, first), multi_test::random_matrix<T>(rows, out_q, first + 1),
            multi_test::random_matrix<T>(rows, out_k, first + 2), multi_test::random_matrix<T>(rows, out_v, first + 3)};
  }

  vera::projection<T> shared;
  vera::adapter<T> q, k, v;
  matrix<T> wq;
  row_major<T> wk;
  matrix<T> wv;
  vec<T> bq, bk;
};

const vera::order orders[] = {vera::order::automatic, vera::order::low_rank, vera::order::merged};

const char* name(vera::order o) {
  switch (o) {
    case vera::order::automatic: return "automatic";
    case vera::order::low_rank: return "low_rank";
    case vera::order::merged: return "merged";
  }
  return "";
}

}  // namespace

TEMPLATE_TEST_CASE("sibling forward equals each sibling's single-adapter forward", "[multi][siblings]", float,
                   double) {
  using T = TestType;
  // 2 GEMM threads send the 16-row batch through the transposed arrangement.
  const int gemm_threads = GENERATE(1, 2);
  const vera_test::gemm_threads_scope threads_scope(gemm_threads);
  trio<T> t;
  const auto group = t.group();
  vera::workspace<T> ws;
  for (const vera::index rows : {0, 1, 16, 67, 127}) {
    const matrix<T> x = multi_test::random_matrix<T>(rows, trio<T>::in, 40 + static_cast<std::uint32_t>(rows));
    for (const bool training : {false, true}) {
      for (const vera::order o : orders) {
        INFO("GEMM threads " << gemm_threads << ", rows " << rows << ", training " << training << ", order "
                             << name(o));
        vera::forward_context<T> group_ctx, ctx_q, ctx_k, ctx_v;
        matrix<T> yq, yk, yv;
        const auto expr = vera::forward(x, group).using_workspace(ws).with_order(o);
        if (training) {
          expr.train(group_ctx).eval_to(yq, yk, yv);
        } else {
          expr.eval_to(yq, yk, yv);
        }

        matrix<T> rq, rk, rv;
        vera::workspace<T> single_ws;
        if (training) {
          rq = vera::forward(x, t.wq, t.bq, t.q).train(ctx_q).using_workspace(single_ws).with_order(o);
          rk = vera::forward(x, t.wk, t.bk, t.k).train(ctx_k).using_workspace(single_ws).with_order(o);
          rv = vera::forward(x, t.wv, vera::no_bias, t.v).train(ctx_v).using_workspace(single_ws).with_order(o);
          CHECK(group_ctx.ready());
          CHECK(same_bits(group_ctx.projected(), ctx_q.projected()));
        } else {
          rq = vera::forward(x, t.wq, t.bq, t.q).using_workspace(single_ws).with_order(o);
          rk = vera::forward(x, t.wk, t.bk, t.k).using_workspace(single_ws).with_order(o);
          rv = vera::forward(x, t.wv, vera::no_bias, t.v).using_workspace(single_ws).with_order(o);
        }
        if (o == vera::order::automatic) {
          // The group charges P once, so it may pick another order than a lone layer would.
          CHECK(relative_gap(yq, rq) <= multi_test::tolerance<T>());
          CHECK(relative_gap(yk, rk) <= multi_test::tolerance<T>());
          CHECK(relative_gap(yv, rv) <= multi_test::tolerance<T>());
        } else {
          // Same operations in the same order: the same bits.
          CHECK(same_bits(yq, rq));
          CHECK(same_bits(yk, rk));
          CHECK(same_bits(yv, rv));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("sibling forward add_to accumulates and works without a workspace", "[multi][siblings]",
                   float, double) {
  using T = TestType;
  trio<T> t;
  const matrix<T> x = multi_test::random_matrix<T>(67, trio<T>::in, 50);
  matrix<T> yq = matrix<T>::Constant(67, trio<T>::out_q, T(2)), yk = matrix<T>::Constant(67, trio<T>::out_k, T(-1));
  matrix<T> yv = matrix<T>::Constant(67, trio<T>::out_v, T(0.5));
  vera::forward(x, t.group()).add_to(yq, yk, yv);
  const matrix<T> rq = vera::forward(x, t.wq, t.bq, t.q);
  const matrix<T> rk = vera::forward(x, t.wk, t.bk, t.k);
  const matrix<T> rv = vera::forward(x, t.wv, vera::no_bias, t.v);
  CHECK(relative_gap(yq, (rq.array() + T(2)).matrix()) <= multi_test::tolerance<T>());
  CHECK(relative_gap(yk, (rk.array() - T(1)).matrix()) <= multi_test::tolerance<T>());
  CHECK(relative_gap(yv, (rv.array() + T(0.5)).matrix()) <= multi_test::tolerance<T>());

  // Blocks of one larger matrix as destinations (not resizable, shape checked).
  matrix<T> all(67, trio<T>::out_q + trio<T>::out_k + trio<T>::out_v);
  vera::forward(x, t.group())
      .eval_to(all.leftCols(trio<T>::out_q), all.middleCols(trio<T>::out_q, trio<T>::out_k),
               all.rightCols(trio<T>::out_v));
  CHECK(relative_gap(all.leftCols(trio<T>::out_q), rq) <= multi_test::tolerance<T>());
  CHECK(relative_gap(all.rightCols(trio<T>::out_v), rv) <= multi_test::tolerance<T>());
}

TEMPLATE_TEST_CASE("sibling backward equals the single-adapter backward of each sibling", "[multi][siblings]",
                   float, double) {
  using T = TestType;
  for (const double dropout : {0.0, 0.3}) {
    trio<T> t(dropout);
    const auto group = t.group();
    for (const vera::index rows : {1, 67, 127, 300}) {
      INFO("rows " << rows << ", dropout " << dropout);
      const auto seed = static_cast<std::uint32_t>(rows);
      const matrix<T> x = multi_test::random_matrix<T>(rows, trio<T>::in, 60 + seed);
      const matrix<T> gq = multi_test::random_matrix<T>(rows, trio<T>::out_q, 61 + seed);
      const matrix<T> gk = multi_test::random_matrix<T>(rows, trio<T>::out_k, 62 + seed);
      const matrix<T> gv = multi_test::random_matrix<T>(rows, trio<T>::out_v, 63 + seed);

      // Same dropout seed and step: the single contexts draw the group's one mask.
      vera::forward_context<T> group_ctx(9), ctx_q(9), ctx_k(9), ctx_v(9);
      vera::workspace<T> ws;
      matrix<T> yq, yk, yv;
      vera::forward(x, group).train(group_ctx).using_workspace(ws).eval_to(yq, yk, yv);
      matrix<T> rq = vera::forward(x, t.wq, t.bq, t.q).train(ctx_q);
      matrix<T> rk = vera::forward(x, t.wk, t.bk, t.k).train(ctx_k);
      matrix<T> rv = vera::forward(x, t.wv, vera::no_bias, t.v).train(ctx_v);
      REQUIRE(same_bits(group_ctx.projected(), ctx_v.projected()));

      vera::gradients<T> grad_q, grad_k, grad_v;
      vera::parameter_gradients(group, group_ctx, gq, gk, gv).using_workspace(ws).eval_to(grad_q, grad_k, grad_v);
      const vera::gradients<T> single_q = vera::parameter_gradients(gq, t.q, ctx_q);
      const vera::gradients<T> single_k = vera::parameter_gradients(gk, t.k, ctx_k);
      const vera::gradients<T> single_v = vera::parameter_gradients(gv, t.v, ctx_v);
      // The group runs the single-adapter evaluator on the same P: the same bits.
      CHECK(same_bits(grad_q.lambda_b, single_q.lambda_b));
      CHECK(same_bits(grad_q.lambda_d, single_q.lambda_d));
      CHECK(same_bits(grad_k.lambda_b, single_k.lambda_b));
      CHECK(same_bits(grad_k.lambda_d, single_k.lambda_d));
      CHECK(same_bits(grad_v.lambda_b, single_v.lambda_b));
      CHECK(same_bits(grad_v.lambda_d, single_v.lambda_d));

      // Accumulating adds the same amounts again.
      vera::parameter_gradients(group, group_ctx, gq, gk, gv).add_to(grad_q, grad_k, grad_v);
      CHECK(relative_gap(grad_q.lambda_d, (2 * single_q.lambda_d).eval()) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_v.lambda_b, (2 * single_v.lambda_b).eval()) <= multi_test::tolerance<T>());

      const matrix<T> expected_dx = matrix<T>(vera::input_gradient(gq, t.wq, t.q, ctx_q)) +
                                    matrix<T>(vera::input_gradient(gk, t.wk, t.k, ctx_k)) +
                                    matrix<T>(vera::input_gradient(gv, t.wv, t.v, ctx_v));
      for (const vera::order o : orders) {
        INFO("order " << name(o));
        matrix<T> dx = vera::input_gradient(group, group_ctx, gq, gk, gv).using_workspace(ws).with_order(o);
        CHECK(relative_gap(dx, expected_dx) <= multi_test::tolerance<T>());
        matrix<T> dx_acc = matrix<T>::Ones(rows, trio<T>::in);
        vera::input_gradient(group, group_ctx, gq, gk, gv).with_order(o).add_to(dx_acc);
        CHECK(relative_gap(dx_acc, (expected_dx.array() + T(1)).matrix()) <= multi_test::tolerance<T>());
      }
    }
  }
}

TEMPLATE_TEST_CASE("the one-pass backward from kept Q equals the separate backward calls", "[multi][siblings]",
                   float, double) {
  using T = TestType;
  for (const double dropout : {0.0, 0.3}) {
    trio<T> t(dropout);
    const auto group = t.group();
    vera::workspace<T> ws;
    vera::sibling_context<T> kept(9);
    for (const vera::index rows : {1, 67, 127, 300}) {
      INFO("rows " << rows << ", dropout " << dropout);
      const auto seed = static_cast<std::uint32_t>(rows);
      const matrix<T> x = multi_test::random_matrix<T>(rows, trio<T>::in, 100 + seed);
      const matrix<T> gq = multi_test::random_matrix<T>(rows, trio<T>::out_q, 101 + seed);
      const matrix<T> gk = multi_test::random_matrix<T>(rows, trio<T>::out_k, 102 + seed);
      const matrix<T> gv = multi_test::random_matrix<T>(rows, trio<T>::out_v, 103 + seed);

      // The reference context follows the kept one's dropout steps.
      vera::forward_context<T> ctx(9);
      ctx.resume_at(kept.projection().next_step());
      matrix<T> yq, yk, yv, rq, rk, rv;
      vera::forward(x, group).train(kept).using_workspace(ws).eval_to(yq, yk, yv);
      vera::forward(x, group).train(ctx).eval_to(rq, rk, rv);
      REQUIRE(kept.ready());
      CHECK(kept.siblings() == 3);
      CHECK(same_bits(kept.projection().projected(), ctx.projected()));
      CHECK(relative_gap(yq, rq) <= multi_test::tolerance<T>());
      CHECK(relative_gap(yk, rk) <= multi_test::tolerance<T>());
      CHECK(relative_gap(yv, rv) <= multi_test::tolerance<T>());

      vera::gradients<T> grad_q, grad_k, grad_v, ref_q, ref_k, ref_v;
      matrix<T> dx;
      vera::backward(group, kept, gq, gk, gv).using_workspace(ws).eval_to(dx, grad_q, grad_k, grad_v);
      vera::parameter_gradients(group, ctx, gq, gk, gv).eval_to(ref_q, ref_k, ref_v);
      const matrix<T> ref_dx = vera::input_gradient(group, ctx, gq, gk, gv);
      CHECK(relative_gap(dx, ref_dx) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_q.lambda_b, ref_q.lambda_b) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_q.lambda_d, ref_q.lambda_d) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_k.lambda_b, ref_k.lambda_b) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_k.lambda_d, ref_k.lambda_d) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_v.lambda_b, ref_v.lambda_b) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_v.lambda_d, ref_v.lambda_d) <= multi_test::tolerance<T>());

      // Accumulating adds the same amounts again; P alone still serves the separate calls.
      vera::backward(group, kept, gq, gk, gv).add_to(dx, grad_q, grad_k, grad_v);
      CHECK(relative_gap(dx, (2 * ref_dx).eval()) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_k.lambda_d, (2 * ref_k.lambda_d).eval()) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grad_v.lambda_b, (2 * ref_v.lambda_b).eval()) <= multi_test::tolerance<T>());
      const vera::gradients<T> single_q = vera::parameter_gradients(gq, t.q, kept.projection());
      CHECK(same_bits(single_q.lambda_b, ref_q.lambda_b));
    }
  }
}

TEST_CASE("the last train() call decides which context a sibling forward fills", "[multi][siblings]") {
  using T = double;
  trio<T> t;
  const auto group = t.group();
  const matrix<T> x = multi_test::random_matrix<T>(5, trio<T>::in, 120);
  matrix<T> yq, yk, yv;

  vera::sibling_context<T> kept;
  vera::forward_context<T> plain;
  vera::forward(x, group).train(kept).train(plain).eval_to(yq, yk, yv);
  CHECK(plain.ready());
  CHECK_FALSE(kept.ready());

  vera::sibling_context<T> kept_last;
  vera::forward_context<T> plain_first;
  vera::forward(x, group).train(plain_first).train(kept_last).eval_to(yq, yk, yv);
  CHECK(kept_last.ready());
  CHECK_FALSE(plain_first.ready());
}

TEST_CASE("the one-pass backward honours frozen vectors and checks its context", "[multi][siblings]") {
  using T = double;
  trio<T> t;
  vera::adapter_options frozen = trio<T>::options(14, 0.0, false);
  frozen.train_b = false;
  vera::adapter<T> q_frozen_b(t.shared, trio<T>::in, trio<T>::out_q, frozen);
  const auto group = vera::siblings(vera::sibling(t.wq, t.bq, q_frozen_b), vera::sibling(t.wv, vera::no_bias, t.v));
  const vera::index rows = 67;
  const matrix<T> x = multi_test::random_matrix<T>(rows, trio<T>::in, 110);
  const matrix<T> gq = multi_test::random_matrix<T>(rows, trio<T>::out_q, 111);
  const matrix<T> gv = multi_test::random_matrix<T>(rows, trio<T>::out_v, 112);
  vera::sibling_context<T> kept;
  vera::gradients<T> grad_q(q_frozen_b), grad_v(t.v);
  matrix<T> dx;
  CHECK_THROWS_AS(vera::backward(group, kept, gq, gv), vera::state_error);

  matrix<T> yq, yv;
  vera::forward(x, group).train(kept).eval_to(yq, yv);
  grad_q.lambda_b.setConstant(3);
  vera::backward(group, kept, gq, gv).add_to(dx = matrix<T>::Zero(rows, trio<T>::in), grad_q, grad_v);
  CHECK((grad_q.lambda_b.array() == 3).all());
  vera::backward(group, kept, gq, gv).eval_to(dx, grad_q, grad_v);
  CHECK((grad_q.lambda_b.array() == 0).all());
  CHECK(grad_q.lambda_d.cwiseAbs().maxCoeff() > 0);

  // A context filled by a group of another size, and a dX of the wrong fixed shape.
  const auto pair = vera::siblings(vera::sibling(t.wq, t.bq, t.q), vera::sibling(t.wk, t.bk, t.k), vera::sibling(t.wv, vera::no_bias, t.v));
  const matrix<T> gk = multi_test::random_matrix<T>(rows, trio<T>::out_k, 113);
  CHECK_THROWS_AS(vera::backward(pair, kept, gq, gk, gv), vera::shape_error);
  matrix<T> storage = matrix<T>::Constant(rows, trio<T>::in + 1, T(4));
  Eigen::Map<matrix<T>> wrong(storage.data(), rows, trio<T>::in + 1);
  grad_v.lambda_d.setConstant(6);
  CHECK_THROWS_AS(vera::backward(group, kept, gq, gv).eval_to(wrong, grad_q, grad_v), vera::shape_error);
  CHECK((storage.array() == 4).all());
  CHECK((grad_v.lambda_d.array() == 6).all());
}

TEMPLATE_TEST_CASE("a group of one sibling is the single-adapter API bit for bit", "[multi][siblings]", float,
                   double) {
  using T = TestType;
  trio<T> t;
  const auto group = vera::siblings(vera::sibling(t.wk, t.bk, t.k));
  for (const vera::index rows : {1, 67, 127}) {
    for (const vera::order o : orders) {
      INFO("rows " << rows << ", order " << name(o));
      const matrix<T> x = multi_test::random_matrix<T>(rows, trio<T>::in, 70);
      const matrix<T> g = multi_test::random_matrix<T>(rows, trio<T>::out_k, 71);
      vera::forward_context<T> group_ctx, ctx;
      vera::workspace<T> ws, single_ws;
      matrix<T> y;
      vera::forward(x, group).train(group_ctx).using_workspace(ws).with_order(o).eval_to(y);
      const matrix<T> r = vera::forward(x, t.wk, t.bk, t.k).train(ctx).using_workspace(single_ws).with_order(o);
      CHECK(same_bits(y, r));
      const matrix<T> dx = vera::input_gradient(group, group_ctx, g).using_workspace(ws).with_order(o);
      const matrix<T> rdx = vera::input_gradient(g, t.wk, t.k, ctx).using_workspace(single_ws).with_order(o);
      CHECK(same_bits(dx, rdx));
    }
  }
}

TEMPLATE_TEST_CASE("a group of one sibling with kept Q matches the single-adapter training step",
                   "[multi][siblings]", float, double) {
  using T = TestType;
  for (const double dropout : {0.0, 0.3}) {
    trio<T> t(dropout);
    const auto group = vera::siblings(vera::sibling(t.wv, vera::no_bias, t.v));
    vera::workspace<T> ws;
    vera::sibling_context<T> kept(5);
    // Rows 1 and 2 scale the thin sides; 67 and 127 build B Λd and Λb B.
    for (const vera::index rows : {1, 2, 67, 127}) {
      INFO("rows " << rows << ", dropout " << dropout);
      const auto seed = static_cast<std::uint32_t>(rows);
      const matrix<T> x = multi_test::random_matrix<T>(rows, trio<T>::in, 140 + seed);
      const matrix<T> g = multi_test::random_matrix<T>(rows, trio<T>::out_v, 141 + seed);
      vera::forward_context<T> ctx(5);
      ctx.resume_at(kept.projection().next_step());
      matrix<T> y;
      vera::forward(x, group).train(kept).using_workspace(ws).eval_to(y);
      const matrix<T> r = vera::forward(x, t.wv, vera::no_bias, t.v).train(ctx);
      CHECK(relative_gap(y, r) <= multi_test::tolerance<T>());
      CHECK(relative_gap(kept.kept(0), (ctx.projected() * t.v.lambda_d().asDiagonal() * t.v.b().transpose()).eval()) <=
            multi_test::tolerance<T>());

      vera::gradients<T> grads;
      matrix<T> dx;
      vera::backward(group, kept, g).using_workspace(ws).eval_to(dx, grads);
      const vera::gradients<T> ref = vera::parameter_gradients(g, t.v, ctx);
      const matrix<T> ref_dx = vera::input_gradient(g, t.wv, t.v, ctx);
      CHECK(relative_gap(dx, ref_dx) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grads.lambda_b, ref.lambda_b) <= multi_test::tolerance<T>());
      CHECK(relative_gap(grads.lambda_d, ref.lambda_d) <= multi_test::tolerance<T>());
    }
  }
}

TEST_CASE("sibling gradients agree with finite differences (double)", "[multi][siblings]") {
  using T = double;
  trio<T> t;
  const auto group = t.group();
  const vera::index rows = 5;
  matrix<T> x = multi_test::random_matrix<T>(rows, trio<T>::in, 80);
  const matrix<T> gq = multi_test::random_matrix<T>(rows, trio<T>::out_q, 81);
  const matrix<T> gk = multi_test::random_matrix<T>(rows, trio<T>::out_k, 82);
  const matrix<T> gv = multi_test::random_matrix<T>(rows, trio<T>::out_v, 83);
  // L = <G_q, Y_q> + <G_k, Y_k> + <G_v, Y_v>, so dL/dY_i = G_i.
  const auto loss = [&] {
    matrix<T> yq, yk, yv;
    vera::forward(x, group).eval_to(yq, yk, yv);
    return gq.cwiseProduct(yq).sum() + gk.cwiseProduct(yk).sum() + gv.cwiseProduct(yv).sum();
  };
  vera::forward_context<T> ctx;
  matrix<T> yq, yk, yv;
  vera::forward(x, group).train(ctx).eval_to(yq, yk, yv);
  vera::gradients<T> grad_q, grad_k, grad_v;
  vera::parameter_gradients(group, ctx, gq, gk, gv).eval_to(grad_q, grad_k, grad_v);
  const matrix<T> dx = vera::input_gradient(group, ctx, gq, gk, gv);

  const double h = 1e-6;
  const auto numeric = [&](T& value) {
    const T saved = value;
    value = saved + h;
    const double up = loss();
    value = saved - h;
    const double down = loss();
    value = saved;
    return (up - down) / (2 * h);
  };
  const auto close = [](double analytic, double estimate) {
    return std::abs(analytic - estimate) <= 1e-7 * std::max(1.0, std::abs(estimate));
  };
  // The one-pass backward from kept Q as well.
  vera::sibling_context<T> kept;
  vera::forward(x, group).train(kept).eval_to(yq, yk, yv);
  vera::gradients<T> kept_q, kept_k, kept_v;
  matrix<T> kept_dx;
  vera::backward(group, kept, gq, gk, gv).eval_to(kept_dx, kept_q, kept_k, kept_v);
  for (vera::index i = 0; i < x.rows(); ++i) {
    for (vera::index j = 0; j < x.cols(); ++j) {
      INFO("X(" << i << ", " << j << ")");
      const double estimate = numeric(x(i, j));
      CHECK(close(dx(i, j), estimate));
      CHECK(close(kept_dx(i, j), estimate));
    }
  }
  const auto check_adapter = [&](vera::adapter<T>& ad, const vera::gradients<T>& g, const char* which) {
    for (vera::index j = 0; j < ad.out_features(); ++j) {
      INFO(which << " lambda_b(" << j << ")");
      CHECK(close(g.lambda_b(j), numeric(ad.lambda_b()(j))));
    }
    for (vera::index k = 0; k < ad.rank(); ++k) {
      INFO(which << " lambda_d(" << k << ")");
      CHECK(close(g.lambda_d(k), numeric(ad.lambda_d()(k))));
    }
  };
  check_adapter(t.q, grad_q, "q");
  check_adapter(t.k, grad_k, "k");
  check_adapter(t.v, grad_v, "v");
  check_adapter(t.q, kept_q, "q, one pass");
  check_adapter(t.k, kept_k, "k, one pass");
  check_adapter(t.v, kept_v, "v, one pass");
}

TEST_CASE("sibling groups refuse bad siblings with the sibling named", "[multi][siblings]") {
  using T = float;
  trio<T> t;
  const auto message = [](auto&& make) -> std::string {
    try {
      make();
    } catch (const vera::error& e) {
      return e.what();
    }
    return "no error";
  };

  SECTION("mismatched in_features") {
    vera::adapter<T> narrow(t.shared, trio<T>::in - 2, trio<T>::out_k);
    const matrix<T> w = matrix<T>::Zero(trio<T>::out_k, trio<T>::in - 2);
    CHECK_THROWS_AS(vera::siblings(vera::sibling(t.wq, t.bq, t.q), vera::sibling(w, vera::no_bias, narrow)),
                    vera::shape_error);
    const std::string m = message([&] { vera::siblings(vera::sibling(t.wq, t.bq, t.q), vera::sibling(w, vera::no_bias, narrow)); });
    CHECK(m.find("sibling 1") != std::string::npos);
    CHECK(m.find("in_features 23") != std::string::npos);
    CHECK(m.find("got 21") != std::string::npos);
  }
  SECTION("different projections, even with the same spec") {
    const vera::projection<T> other(t.shared.spec());
    vera::adapter<T> k2(other, trio<T>::in, trio<T>::out_k);
    const matrix<T> w = matrix<T>::Zero(trio<T>::out_k, trio<T>::in);
    CHECK_THROWS_AS(vera::siblings(vera::sibling(t.wq, t.bq, t.q), vera::sibling(w, vera::no_bias, k2)),
                    vera::value_error);
    const std::string m = message([&] { vera::siblings(vera::sibling(t.wq, t.bq, t.q), vera::sibling(w, vera::no_bias, k2)); });
    CHECK(m.find("sibling 1 adapter") != std::string::npos);
    CHECK(m.find("projection") != std::string::npos);
  }
  SECTION("different ranks") {
    vera::adapter_options o;
    o.rank = trio<T>::rank - 1;
    vera::adapter<T> small(t.shared, trio<T>::in, trio<T>::out_k, o);
    const matrix<T> w = matrix<T>::Zero(trio<T>::out_k, trio<T>::in);
    CHECK_THROWS_AS(vera::siblings(vera::sibling(t.wq, t.bq, t.q), vera::sibling(w, vera::no_bias, small)),
                    vera::rank_error);
  }
  SECTION("different dropout") {
    vera::adapter_options o;
    o.dropout = 0.1;
    vera::adapter<T> dropping(t.shared, trio<T>::in, trio<T>::out_k, o);
    const matrix<T> w = matrix<T>::Zero(trio<T>::out_k, trio<T>::in);
    CHECK_THROWS_AS(vera::siblings(vera::sibling(t.wq, t.bq, t.q), vera::sibling(w, vera::no_bias, dropping)),
                    vera::value_error);
    const std::string m = message([&] { vera::siblings(vera::sibling(t.wq, t.bq, t.q), vera::sibling(w, vera::no_bias, dropping)); });
    CHECK(m.find("dropout") != std::string::npos);
  }
  SECTION("wrong W0 and bias shapes") {
    const matrix<T> w_transposed = t.wq.transpose();
    CHECK_THROWS_AS(vera::siblings(vera::sibling(w_transposed, t.bq, t.q)), vera::shape_error);
    const std::string m = message([&] { vera::siblings(vera::sibling(t.wv, vera::no_bias, t.v), vera::sibling(w_transposed, t.bq, t.q)); });
    CHECK(m.find("sibling 1 W0: expected 19 x 23, got 23 x 19") != std::string::npos);
    const vec<T> short_bias = vec<T>::Zero(trio<T>::out_q - 1);
    const std::string mb = message([&] { vera::siblings(vera::sibling(t.wq, short_bias, t.q)); });
    CHECK(mb.find("sibling 0 bias: expected 19 elements, got 18") != std::string::npos);
  }
}

TEST_CASE("sibling evaluations check everything before writing anything", "[multi][siblings]") {
  using T = float;
  trio<T> t;
  const auto group = t.group();
  const vera::index rows = 67;
  const auto [x, gq, gk, gv] = trio<T>::random_batch(rows, 90);

  SECTION("X with the wrong width") {
    const matrix<T> wide = matrix<T>::Zero(rows, trio<T>::in + 1);
    CHECK_THROWS_AS(vera::forward(wide, group), vera::shape_error);
  }
  SECTION("a destination of the wrong shape leaves every destination as it was") {
    matrix<T> yq = matrix<T>::Constant(3, 4, T(7)), yk = matrix<T>::Constant(rows, trio<T>::out_k, T(7));
    matrix<T> storage = matrix<T>::Constant(rows, trio<T>::out_v + 1, T(7));
    Eigen::Map<matrix<T>> yv(storage.data(), rows, trio<T>::out_v + 1);
    vera::forward_context<T> ctx;
    CHECK_THROWS_AS(vera::forward(x, group).train(ctx).eval_to(yq, yk, yv), vera::shape_error);
    CHECK(yq.rows() == 3);
    CHECK((yq.array() == T(7)).all());
    CHECK((yk.array() == T(7)).all());
    CHECK((storage.array() == T(7)).all());
    CHECK_FALSE(ctx.ready());
    CHECK(ctx.next_step() == 0);
  }
  SECTION("a destination overlapping X or another destination") {
    matrix<T> yq(rows, trio<T>::out_q), yv(rows, trio<T>::out_v);
    matrix<T> wide = x;
    CHECK_THROWS_AS(vera::forward(wide, group).eval_to(yq, wide.leftCols(trio<T>::out_k), yv), vera::aliasing_error);
    CHECK(wide == x);
    matrix<T> shared_y = matrix<T>::Constant(rows, trio<T>::out_v, T(3));
    CHECK_THROWS_AS(vera::forward(x, group).eval_to(yq, shared_y.leftCols(trio<T>::out_k), shared_y),
                    vera::aliasing_error);
    CHECK((shared_y.array() == T(3)).all());
  }
  SECTION("backward without a training forward") {
    vera::forward_context<T> ctx;
    CHECK_THROWS_AS(vera::parameter_gradients(group, ctx, gq, gk, gv), vera::state_error);
    CHECK_THROWS_AS(vera::input_gradient(group, ctx, gq, gk, gv), vera::state_error);
  }
  SECTION("wrong G shapes and gradient buffers leave the caller's data untouched") {
    vera::forward_context<T> ctx;
    matrix<T> yq, yk, yv;
    vera::forward(x, group).train(ctx).eval_to(yq, yk, yv);
    const matrix<T> gk_narrow = multi_test::random_matrix<T>(rows, trio<T>::out_k - 1, 94);
    const matrix<T> gv_short = multi_test::random_matrix<T>(rows - 1, trio<T>::out_v, 95);
    std::string m;
    try {
      (void)vera::parameter_gradients(group, ctx, gq, gk_narrow, gv);
    } catch (const vera::shape_error& e) {
      m = e.what();
    }
    CHECK(m.find("sibling 1 G: expected 8 columns") != std::string::npos);
    CHECK(m.find("got 7") != std::string::npos);
    CHECK_THROWS_AS(vera::input_gradient(group, ctx, gq, gk, gv_short), vera::shape_error);
    try {
      (void)vera::input_gradient(group, ctx, gq, gk, gv_short);
    } catch (const vera::shape_error& e) {
      m = e.what();
    }
    CHECK(m.find("sibling 2 G: expected 67 rows") != std::string::npos);

    // Gradient buffers: sibling 2's has the wrong size, so nothing is written to any of them.
    vera::gradients<T> grad_q(t.q), grad_k(t.k), grad_v;
    grad_q.lambda_b.setConstant(5);
    grad_k.lambda_d.setConstant(5);
    grad_v.lambda_b = vec<T>::Constant(trio<T>::out_v + 1, 5);
    grad_v.lambda_d = vec<T>::Constant(trio<T>::rank, 5);
    CHECK_THROWS_AS(vera::parameter_gradients(group, ctx, gq, gk, gv).eval_to(grad_q, grad_k, grad_v),
                    vera::shape_error);
    CHECK((grad_q.lambda_b.array() == T(5)).all());
    CHECK((grad_k.lambda_d.array() == T(5)).all());
    CHECK(grad_v.lambda_b.size() == trio<T>::out_v + 1);

    // grad_X into a destination of the wrong fixed shape, or overlapping G.
    matrix<T> storage = matrix<T>::Constant(rows, trio<T>::in + 2, T(4));
    Eigen::Map<matrix<T>> dx(storage.data(), rows, trio<T>::in + 2);
    CHECK_THROWS_AS(vera::input_gradient(group, ctx, gq, gk, gv).add_to(dx), vera::shape_error);
    CHECK((storage.array() == T(4)).all());
    matrix<T> gv_and_dx = matrix<T>::Zero(rows, trio<T>::out_v + trio<T>::in);
    gv_and_dx.leftCols(trio<T>::out_v) = gv;
    Eigen::Map<matrix<T>> overlapping(gv_and_dx.data() + rows, rows, trio<T>::in);
    const matrix<T> before = gv_and_dx;
    CHECK_THROWS_AS(vera::input_gradient(group, ctx, gq, gk, gv_and_dx.leftCols(trio<T>::out_v)).add_to(overlapping),
                    vera::aliasing_error);
    CHECK_THROWS_AS(overlapping = vera::input_gradient(group, ctx, gq, gk, gv_and_dx.leftCols(trio<T>::out_v)),
                    vera::aliasing_error);
    CHECK(gv_and_dx == before);
  }
}

TEST_CASE("sibling gradients need one object per sibling; kept() checks its index", "[multi][siblings]") {
  using T = double;
  trio<T> t;
  const auto group = t.group();
  const vera::index rows = 9;
  const auto [x, gq, gk, gv] = trio<T>::random_batch(rows, 130);
  vera::sibling_context<T> kept;
  matrix<T> yq, yk, yv;
  vera::forward(x, group).train(kept).eval_to(yq, yk, yv);

  // Sibling 0 and sibling 2 given the same object: an error naming both, nothing written.
  vera::gradients<T> shared(t.q), grad_k(t.k);
  shared.lambda_b.setConstant(5);
  shared.lambda_d.setConstant(5);
  grad_k.lambda_d.setConstant(5);
  matrix<T> dx = matrix<T>::Constant(rows, trio<T>::in, T(4));
  std::string message;
  try {
    vera::backward(group, kept, gq, gk, gv).add_to(dx, shared, grad_k, shared);
  } catch (const vera::aliasing_error& e) {
    message = e.what();
  }
  CHECK(message.find("sibling 0 gradients and sibling 2 gradients") != std::string::npos);
  CHECK_THROWS_AS(vera::backward(group, kept, gq, gk, gv).eval_to(dx, grad_k, grad_k, shared), vera::aliasing_error);
  CHECK_THROWS_AS(vera::parameter_gradients(group, kept.projection(), gq, gk, gv).eval_to(shared, grad_k, shared),
                  vera::aliasing_error);
  CHECK_THROWS_AS(vera::parameter_gradients(group, kept.projection(), gq, gk, gv).add_to(shared, shared, grad_k),
                  vera::aliasing_error);
  CHECK((dx.array() == T(4)).all());
  CHECK(shared.lambda_b.size() == trio<T>::out_q);
  CHECK((shared.lambda_b.array() == T(5)).all());
  CHECK((shared.lambda_d.array() == T(5)).all());
  CHECK((grad_k.lambda_d.array() == T(5)).all());

  // Distinct objects still work, and each Q_i is reachable by index, no further.
  vera::gradients<T> grad_q(t.q), grad_v(t.v);
  vera::backward(group, kept, gq, gk, gv).eval_to(dx, grad_q, grad_k, grad_v);
  CHECK(grad_v.lambda_b.size() == trio<T>::out_v);
  CHECK(kept.kept(2).cols() == trio<T>::out_v);
  message.clear();
  try {
    (void)kept.kept(3);
  } catch (const vera::value_error& e) {
    message = e.what();
  }
  CHECK(message == "sibling_context::kept: sibling 3 requested, the context holds 3 siblings");
  CHECK_THROWS_AS(vera::sibling_context<T>().kept(0), vera::value_error);
}

TEST_CASE("the group cost model charges the shared product once", "[multi][siblings]") {
  // One sibling: exactly the single-layer model, for forwards and input gradients.
  for (const vera::index rows : {1, 32, 512, 2048, 8192}) {
    for (const vera::index rank : {16, 256, 1024}) {
      const vera::detail::product_extents e{rows, 768, 768, rank};
      for (const bool reused : {false, true}) {
        INFO("rows " << rows << ", rank " << rank << ", reused workspace " << reused);
        const std::array<vera::detail::product_extents, 1> one{e};
        CHECK(vera::detail::choose_sibling_orders(vera::order::automatic, one, false, reused, true)[0] ==
              vera::detail::choose_order(vera::order::automatic, vera::detail::forward_costs(e, false, reused), true));
        CHECK(vera::detail::choose_sibling_orders(vera::order::automatic, one, true, reused, true)[0] ==
              vera::detail::choose_order(vera::order::automatic, vera::detail::forward_costs(e, true, reused), true));
        CHECK(vera::detail::choose_sibling_orders(vera::order::automatic, one, false, reused, true)[0] ==
              vera::detail::choose_order(vera::order::automatic, vera::detail::input_gradient_costs(e, reused), true));
      }
    }
  }
  // 768x768, r = 256, reused workspace, n = 512: a lone inference layer runs merged (P costs as
  // much as the rest of its low-rank term); three siblings sharing P run low-rank.
  const vera::detail::product_extents e{512, 768, 768, 256};
  CHECK(vera::detail::choose_order(vera::order::automatic, vera::detail::forward_costs(e, false, true), true) == vera::order::merged);
  const std::array<vera::detail::product_extents, 3> three{e, e, e};
  for (const vera::order o : vera::detail::choose_sibling_orders(vera::order::automatic, three, false, true, true)) {
    CHECK(o == vera::order::low_rank);
  }
  // With P paid (training), both orders grow with out_i alike, so siblings of one group agree:
  // merged for a long batch, low-rank for a short one.
  const vera::detail::product_extents wide{8192, 768, 3072, 256}, narrow{8192, 768, 64, 256};
  for (const vera::order o : vera::detail::choose_sibling_orders(vera::order::automatic,
                                                        std::array<vera::detail::product_extents, 2>{wide, narrow}, true,
                                                        true, true)) {
    CHECK(o == vera::order::merged);
  }
  const vera::detail::product_extents short_wide{32, 768, 3072, 256}, short_narrow{32, 768, 64, 256};
  for (const vera::order o : vera::detail::choose_sibling_orders(
           vera::order::automatic, std::array<vera::detail::product_extents, 2>{short_wide, short_narrow}, true, true, true)) {
    CHECK(o == vera::order::low_rank);
  }
  // Requests apply to all; dropout (merged not valid) forces low-rank.
  for (const vera::order o : vera::detail::choose_sibling_orders(vera::order::merged, three, false, true, true)) {
    CHECK(o == vera::order::merged);
  }
  for (const vera::order o : vera::detail::choose_sibling_orders(vera::order::merged, three, false, true, false)) {
    CHECK(o == vera::order::low_rank);
  }
}
