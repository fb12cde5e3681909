// SPDX-License-Identifier: Apache-2.0
// Tests of sibling groups with bfloat16 storage (float adapters): each sibling against its
// single-layer bfloat16 path, bit for bit where both round the same way, and the group's outputs
// and gradients against the long-double reference.
#include <catch2/catch.hpp>

#include <sstream>
#include <string>

#include <vera/multi.hpp>

#include "../support/reference.hpp"

using vera_test::bfloat16_budget;
using vera_test::half;
using vera_test::half_matrix;
using vera_test::half_rows;
using vera_test::half_vector;
using vera_test::compare;
using vera_test::same_bits;
using vera_test::wide;
using vera_test::wide_matrix;

namespace {

constexpr vera::index in = 37;
constexpr vera::index rank = 13;
constexpr vera::index out_q = 19, out_k = 8, out_v = 64;

template <class M>
half_matrix rounded(const M& m) {
  return m.template cast<half>();
}

/// q/k/v in bfloat16: q column-major with a bias, k stored in x out (fan_in_fan_out) row-major
/// with a bias, v column-major without a bias. Their extents put some products on the thin-side
/// form and others on the folded one at the same batch size.
struct half_trio {
  explicit half_trio(double dropout)
      : shared({5, rank + 2, in + 3, out_v + 1, vera::generator::philox}),
        q(shared, in, out_q, options(dropout, false)),
        k(shared, in, out_k, options(dropout, true)),
        v(shared, in, out_v, options(dropout, false)),
        wq(rounded(vera_test::random_matrix<float>(out_q, in, 21))),
        wk(vera_test::random_matrix<float>(in, out_k, 22).cast<half>()),
        wv(rounded(vera_test::random_matrix<float>(out_v, in, 23))),
        bq(vera_test::random_vector<float>(out_q, 24).cast<half>()),
        bk(vera_test::random_vector<float>(out_k, 25).cast<half>()) {
    q.set_lambdas(vera_test::random_vector<float>(out_q, 31), vera_test::random_vector<float>(rank, 32));
    k.set_lambdas(vera_test::random_vector<float>(out_k, 33), vera_test::random_vector<float>(rank, 34));
    v.set_lambdas(vera_test::random_vector<float>(out_v, 35), vera_test::random_vector<float>(rank, 36));
  }

  static vera::adapter_options options(double dropout, bool fan_in_fan_out) {
    vera::adapter_options o;
    o.rank = rank;
    o.dropout = dropout;
    o.fan_in_fan_out = fan_in_fan_out;
    return o;
  }

  auto group() const {
    return vera::siblings(vera::sibling(wq, bq, q), vera::sibling(wk, bk, k), vera::sibling(wv, vera::no_bias, v));
  }

  /// Sibling i's values as the bfloat16 path computes with them: its stored operands widened,
  /// A and B rounded to bfloat16, b and d in float32.
  vera_test::layer_values values(int i, const half_matrix& x, const vera::dropout_key* key) const {
    const vera_test::matrix<float> xf = x.cast<float>();
    vera_test::layer_values out;
    const auto widen = [&](const auto& w0, const half_vector* bias, const vera::adapter<float>& ad) {
      const vera_test::matrix<float> wf = w0.template cast<float>();
      const vera::vector<float> bf = bias != nullptr ? vera::vector<float>(bias->cast<float>()) : vera::vector<float>();
      auto vals = vera_test::capture(xf, wf, bias != nullptr ? &bf : nullptr, ad, key);
      vals.a = shared.a_bfloat16(in, rank).cast<float>().cast<wide>();
      vals.b = shared.b_bfloat16(ad.out_features(), rank).cast<float>().cast<wide>();
      return vals;
    };
    if (i == 0) return widen(wq, &bq, q);
    if (i == 1) return widen(wk, &bk, k);
    return widen(wv, nullptr, v);
  }

  vera::projection<float> shared;
  vera::adapter<float> q, k, v;
  half_matrix wq;
  half_rows wk;
  half_matrix wv;
  half_vector bq, bk;
};

struct half_batch {
  half_batch(vera::index rows, std::uint32_t seed)
      : x(rounded(vera_test::random_matrix<float>(rows, in, seed))),
        gq(rounded(vera_test::random_matrix<float>(rows, out_q, seed + 1))),
        gk(rounded(vera_test::random_matrix<float>(rows, out_k, seed + 2))),
        gv(rounded(vera_test::random_matrix<float>(rows, out_v, seed + 3))) {}

  wide_matrix g(int i) const { return (i == 0 ? gq : i == 1 ? gk : gv).cast<float>().cast<wide>(); }

  half_matrix x, gq, gk, gv;
};

std::string describe(vera::index rows, double dropout) {
  std::ostringstream os;
  os << "rows " << rows << ", dropout " << dropout << ", provider " << vera::gemm_provider();
  return os.str();
}

/// The group's grad_X against the reference: the sum of each sibling's grad_X.
struct summed_input_gradient {
  wide_matrix want;
  wide_matrix size;
};

summed_input_gradient reference_input_gradient(const half_trio& t, const half_batch& b, const vera::dropout_key* key) {
  summed_input_gradient r{wide_matrix::Zero(b.x.rows(), in), wide_matrix::Zero(b.x.rows(), in)};
  for (int i = 0; i < 3; ++i) {
    const auto v = t.values(i, b.x, key);
    r.want += vera_test::reference_backward(v, b.g(i)).grad_x;
    r.size += vera_test::reference_backward(vera_test::magnitudes(v), b.g(i).cwiseAbs()).grad_x;
  }
  return r;
}

}  // namespace

TEST_CASE("bfloat16 sibling forward and gradients equal each sibling's bfloat16 layer", "[multi][siblings][bfloat16]") {
  for (const vera::index rows : {0, 1, 5, 40, 150}) {
    for (const double dropout : {0.0, 0.3}) {
      INFO(describe(rows, dropout));
      half_trio t(dropout);
      const half_batch b(rows, 40);
      const auto group = t.group();
      vera::workspace<float> ws;

      // Inference: each sibling exactly as its own bfloat16 forward, in bfloat16 and in float.
      half_matrix yq, yk, yv;
      vera::forward(b.x, group).using_workspace(ws).eval_to(yq, yk, yv);
      CHECK(same_bits(yq, half_matrix(vera::forward(b.x, t.wq, t.bq, t.q))));
      CHECK(same_bits(yk, half_matrix(vera::forward(b.x, t.wk, t.bk, t.k))));
      CHECK(same_bits(yv, half_matrix(vera::forward(b.x, t.wv, vera::no_bias, t.v))));
      Eigen::MatrixXf fq(rows, out_q), fk(rows, out_k), fv(rows, out_v);
      vera::forward(b.x, group).eval_to(fq, fk, fv);
      Eigen::MatrixXf single(rows, out_v);
      vera::forward(b.x, t.wv, vera::no_bias, t.v).assign_to(single);
      CHECK(same_bits(fv, single));
      // add_to: the destination's values enter the float32 accumulator.
      Eigen::MatrixXf aq = Eigen::MatrixXf::Constant(rows, out_q, 2.0f), ak = Eigen::MatrixXf::Constant(rows, out_k, 2.0f),
                      av = Eigen::MatrixXf::Constant(rows, out_v, 2.0f);
      vera::forward(b.x, group).add_to(aq, ak, av);
      Eigen::MatrixXf sq = Eigen::MatrixXf::Constant(rows, out_q, 2.0f);
      vera::forward(b.x, t.wq, t.bq, t.q).add_to(sq);
      CHECK(same_bits(aq, sq));

      // Training: one P and one mask for the group.
      vera::forward_context<float> ctx;
      vera::forward(b.x, group).train(ctx).using_workspace(ws).eval_to(yq, yk, yv);
      const vera::dropout_key* key = &ctx.mask_key();
      const vera::index depth = vera_test::rounding_depth(rows, in, out_q + out_k + out_v, rank);
      const int masked = dropout > 0.0 ? 1 : 0;
      const half_matrix* ys[] = {&yq, &yk, &yv};
      for (int i = 0; i < 3; ++i) {
        const auto v = t.values(i, b.x, key);
        const auto want = vera_test::reference_forward(v);
        const auto size = vera_test::reference_forward(vera_test::magnitudes(v));
        // Rounded: the masked input (with dropout), P (or P Λd), Λb B Λd, and the output.
        const auto check = compare(*ys[i], want.y, size.y, bfloat16_budget(3 + masked, depth));
        INFO("sibling " << i << " Y: " << check);
        CHECK(check.ok());
      }

      // Parameter gradients read the shared P exactly as each sibling's own call does.
      vera::gradients<float> oq, ok, ov;
      vera::parameter_gradients(group, ctx, b.gq, b.gk, b.gv).using_workspace(ws).eval_to(oq, ok, ov);
      vera::gradients<float> single_v(t.v);
      single_v = vera::parameter_gradients(b.gv, t.v, ctx);
      CHECK(same_bits(ov.lambda_b, single_v.lambda_b));
      CHECK(same_bits(ov.lambda_d, single_v.lambda_d));
      vera::gradients<float> single_k(t.k);
      single_k = vera::parameter_gradients(b.gk, t.k, ctx);
      CHECK(same_bits(ok.lambda_d, single_k.lambda_d));

      // grad_X: the siblings' thin terms summed in float32, rounded once, projected back once.
      const auto ref = reference_input_gradient(t, b, key);
      half_matrix dx = vera::input_gradient(group, ctx, b.gq, b.gk, b.gv).using_workspace(ws);
      // Rounded: Λb B Λd (or G Λb), the summed T, and the bfloat16 output.
      const auto dx_check = compare(dx, ref.want, ref.size, bfloat16_budget(3, depth));
      INFO("grad_X (bfloat16): " << dx_check);
      CHECK(dx_check.ok());
      Eigen::MatrixXf dx_float = Eigen::MatrixXf::Constant(rows, in, 5.0f);
      vera::input_gradient(group, ctx, b.gq, b.gk, b.gv).assign_to(dx_float);
      const auto dx_float_check = compare(dx_float, ref.want, ref.size, bfloat16_budget(2, depth));
      INFO("grad_X (float): " << dx_float_check);
      CHECK(dx_float_check.ok());
    }
  }
}

TEST_CASE("the bfloat16 one-pass sibling backward matches the reference", "[multi][siblings][bfloat16]") {
  for (const vera::index rows : {0, 1, 5, 40, 150}) {
    for (const double dropout : {0.0, 0.3}) {
      INFO(describe(rows, dropout));
      half_trio t(dropout);
      const half_batch b(rows, 50);
      const auto group = t.group();
      vera::sibling_context<float> sctx;
      vera::workspace<float> ws;
      half_matrix yq, yk, yv;
      vera::forward(b.x, group).train(sctx).using_workspace(ws).eval_to(yq, yk, yv);
      const vera::dropout_key* key = &sctx.projection().mask_key();
      const vera::index depth = vera_test::rounding_depth(rows, in, out_q + out_k + out_v, rank);
      const int masked = dropout > 0.0 ? 1 : 0;

      half_matrix dx;
      vera::gradients<float> oq, ok, ov;
      vera::backward(group, sctx, b.gq, b.gk, b.gv).using_workspace(ws).eval_to(dx, oq, ok, ov);
      const half_matrix* ys[] = {&yq, &yk, &yv};
      const vera::gradients<float>* outs[] = {&oq, &ok, &ov};
      for (int i = 0; i < 3; ++i) {
        const auto v = t.values(i, b.x, key);
        const auto want = vera_test::reference_forward(v);
        const auto size = vera_test::reference_forward(vera_test::magnitudes(v));
        // Kept Q = bf16(P Λd) B^T: rounded are the masked input, P Λd, and the output.
        const auto y_check = compare(*ys[i], want.y, size.y, bfloat16_budget(2 + masked, depth));
        INFO("sibling " << i << " Y: " << y_check);
        CHECK(y_check.ok());
        const auto grads = vera_test::reference_backward(v, b.g(i));
        const auto grad_size = vera_test::reference_backward(vera_test::magnitudes(v), b.g(i).cwiseAbs());
        // grad_b = colsum(G ⊙ Q): the masked input and P Λd rounded. grad_d = colsum(U ⊙ P) with
        // U from G Λb or Λb B rounded, and P from the masked input.
        const auto gb = compare(outs[i]->lambda_b, grads.grad_b, grad_size.grad_b, bfloat16_budget(1 + masked, depth));
        INFO("sibling " << i << " grad_b: " << gb);
        CHECK(gb.ok());
        const auto gd = compare(outs[i]->lambda_d, grads.grad_d, grad_size.grad_d, bfloat16_budget(1 + masked, depth));
        INFO("sibling " << i << " grad_d: " << gd);
        CHECK(gd.ok());
      }
      const auto ref = reference_input_gradient(t, b, key);
      // Rounded: G Λb or Λb B, the summed U Λd, and the bfloat16 output.
      const auto dx_check = compare(dx, ref.want, ref.size, bfloat16_budget(3, depth));
      INFO("grad_X: " << dx_check);
      CHECK(dx_check.ok());

      // Accumulating adds the same numbers to what is there (float destination: unrounded).
      Eigen::MatrixXf dx_float = Eigen::MatrixXf::Zero(rows, in);
      vera::gradients<float> aq = oq, ak = ok, av = ov;
      vera::backward(group, sctx, b.gq, b.gk, b.gv).add_to(dx_float, aq, ak, av);
      const auto acc_check = compare(dx_float, ref.want, ref.size, bfloat16_budget(2, depth));
      INFO("grad_X (float, accumulated onto zero): " << acc_check);
      CHECK(acc_check.ok());
      const Eigen::VectorXf doubled = 2.0f * oq.lambda_d;
      CHECK(same_bits(aq.lambda_d, doubled));
    }
  }
}

TEST_CASE("bfloat16 sibling groups refuse the merged order before touching a context", "[multi][siblings][bfloat16]") {
  half_trio t(0.0);
  const half_batch b(6, 60);
  const auto group = t.group();
  half_matrix yq, yk, yv;
  vera::sibling_context<float> sctx;
  CHECK_THROWS_AS(vera::forward(b.x, group).train(sctx).with_order(vera::order::merged).eval_to(yq, yk, yv),
                  vera::value_error);
  CHECK_FALSE(sctx.ready());
  vera::forward_context<float> ctx;
  vera::forward(b.x, group).train(ctx).eval_to(yq, yk, yv);
  half_matrix dx = half_matrix::Constant(6, in, half(3.0f));
  CHECK_THROWS_AS(dx = vera::input_gradient(group, ctx, b.gq, b.gk, b.gv).with_order(vera::order::merged),
                  vera::value_error);
  CHECK((dx.cast<float>().array() == 3.0f).all());
}
