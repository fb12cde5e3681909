// SPDX-License-Identifier: Apache-2.0
// The CPU evaluators' bfloat16 path: bfloat16 storage, float32 accumulation, b and d in float32.
#pragma once

#include <algorithm>
#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/context.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/backend/cpu/common.hpp"
#include "vera/backend/cpu/gemm.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/core/exec.hpp"
#include "vera/core/dropout.hpp"
#include "vera/expr/operand.hpp"

namespace vera::detail::cpu::bfloat16_path {

/// Refuses a requested merged order, before anything is written: every bfloat16 operation runs
/// the low-rank order, since a merged bfloat16 weight would round differently from the unmerged
/// layer. `operation` names the call in the message.
inline void require_low_rank(const char* operation, order requested) {
  if (requested == order::merged) {
    throw value_error(std::string(operation) +
                      ": bfloat16 layers run the low-rank order only (a merged bfloat16 weight would "
                      "round differently from the unmerged layer)");
  }
}

// A layer with bfloat16 X, W0 and G computes as PEFT does for a bfloat16 model: A and B rounded
// to bfloat16 once (the projection keeps those copies), every GEMM on bfloat16 factors with a
// float32 accumulator, the scales, P and the gradients of b and d in float32. Thin operands are
// rounded to bfloat16 right before the GEMM that reads them (P, T, Λb B Λd), so the GEMMs run on
// the fast bfloat16 kernels; each output is rounded once, from its float32 accumulator.

using half = Eigen::bfloat16;

/// bfloat16 workspace slots.
enum half_slot : int { half_thin = 0, half_scaled_b = 1, half_tile = 2 };

/// A workspace buffer viewed in the storage order of `Like`, so that the elementwise passes
/// between them (casts, scaled copies, the final rounding) run in memory order and vectorise.
template <class Like, class Map>
auto laid_out_like(Map buffer) {
  constexpr int order = Like::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
  using matrix = Eigen::Matrix<typename Map::Scalar, Eigen::Dynamic, Eigen::Dynamic, order>;
  return Eigen::Map<matrix>(buffer.data(), buffer.rows(), buffer.cols());
}

/// out = sign Λb B Λd (out x rank; without Λd when `with_d` is false) from the bfloat16 B,
/// formed in float32 and stored in out's scalar (rounded once when that is bfloat16).
template <class Out>
void fold_scales(const adapter<float>& ad, float sign, Out& out, bool with_d = true) {
  const auto b = ad.shared_projection().b_bfloat16(ad.out_features(), ad.rank());
  const auto lambda_b = ad.lambda_b();
  const auto lambda_d = ad.lambda_d();
  using S = typename Out::Scalar;
  const auto element = [&](index j, index k) {
    const float d = with_d ? lambda_d(k) : 1.0f;
    out(j, k) = S(sign * lambda_b(j) * static_cast<float>(b(j, k)) * d);
  };
  // In out's memory order (B itself is row-major).
  if constexpr (Out::IsRowMajor) {
    for (index j = 0; j < out.rows(); ++j) {
      for (index k = 0; k < out.cols(); ++k) element(j, k);
    }
  } else {
    for (index k = 0; k < out.cols(); ++k) {
      for (index j = 0; j < out.rows(); ++j) element(j, k);
    }
  }
}

/// Λb B Λd (or Λb B) rounded to bfloat16, in its bfloat16 workspace slot.
inline auto rounded_scaled_b(const adapter<float>& ad, workspace<float>& ws, bool with_d = true) {
  // Row-major like the rounded B it is read from, so the pass runs in memory order.
  auto out = laid_out_like<row_matrix<half>>(ws.get_bfloat16(half_scaled_b, ad.out_features(), ad.rank()));
  fold_scales(ad, 1.0f, out, with_d);
  return out;
}

/// The float32 accumulator of an n x cols output, in the destination's storage order: zero, or
/// the destination's values to add to.
template <class Dst>
auto accumulator(Dst& dst, assign_mode mode, workspace<float>& ws) {
  auto acc = laid_out_like<Dst>(ws.get(slot_weight, dst.rows(), dst.cols()));
  if (mode == assign_mode::accumulate) {
    acc = dst.template cast<float>();
  } else {
    acc.setZero();
  }
  return acc;
}

/// Whether a product of this kind and batch keeps the scales on its n-row sides.
inline bool thin_side_scales(product_kind kind, index rows, const adapter<float>& ad) {
  return plan_for(request_for(kind, extents_of(rows, ad), order::low_rank)).thin_side_scales;
}

/// P = drop(X) A^T in float32 from bfloat16 X and A; with a dropout key, the masked input is
/// formed in bfloat16 tiles.
template <class X, class P>
void project(const X& x, const adapter<float>& ad, const dropout_key* key, P& p, workspace<float>& ws) {
  const auto a = ad.shared_projection().a_bfloat16(ad.in_features(), ad.rank());
  if (key == nullptr || key->probability == 0.0) {
    gemm(p, x, a.transpose(), false);
    return;
  }
  const float keep_scale = static_cast<float>(1.0 / (1.0 - key->probability));
  for (index first = 0; first < x.rows(); first += dropout_tile_rows) {
    const index rows = std::min(dropout_tile_rows, x.rows() - first);
    auto tile = ws.get_bfloat16(half_tile, rows, x.cols());
    for (index j = 0; j < tile.cols(); ++j) {
      for (index i = 0; i < rows; ++i) {
        tile(i, j) = dropout_keeps(*key, first + i, j) ? half(static_cast<float>(x(first + i, j)) * keep_scale)
                                                       : half(0.0f);
      }
    }
    gemm(p.middleRows(first, rows), tile, a.transpose(), false);
  }
}

/// Y = (or +=) X W0^T + bias + ((P Λd) B^T) Λb from a filled P (float32), in the low-rank
/// order. With `kept`, Q = (P Λd) B^T is also left there (n x out, float32) for the sibling
/// group's one-pass backward. Sibling groups call this once per sibling with their shared P.
template <class X, class P, class W, class Bias, class Y>
void adapted_product(const X& x, const P& p, const W& w0, const Bias& bias, const adapter<float>& ad, Y& y,
                     assign_mode mode, workspace<float>& ws, Eigen::MatrixXf* kept = nullptr) {
  const index n = x.rows();
  auto acc = accumulator(y, mode, ws);
  if constexpr (!std::is_same_v<Bias, no_bias_t>) {
    initialise_output(acc, bias.template cast<float>(), assign_mode::accumulate);
  }
  with_weight(ad, w0, [&](const auto& w) { gemm(acc, x, w.transpose(), true); });
  auto p_half = ws.get_bfloat16(half_thin, n, ad.rank());
  if (kept != nullptr || thin_side_scales(product_kind::forward, n, ad)) {
    // ((P Λd) B^T) Λb: the scales on the n-row sides (small batches, or Q kept).
    p_half = (p * ad.lambda_d().asDiagonal()).template cast<half>();
    const auto add_scaled = [&](auto q) {
      gemm(q, p_half, ad.shared_projection().b_bfloat16(ad.out_features(), ad.rank()).transpose(), false);
      acc += q * ad.lambda_b().asDiagonal();
    };
    if (kept != nullptr) {
      add_scaled(Eigen::Map<Eigen::MatrixXf>(kept->data(), n, ad.out_features()));
    } else {
      add_scaled(laid_out_like<Y>(ws.get(slot_scaled_b, n, ad.out_features())));
    }
  } else {
    p_half = p.template cast<half>();
    gemm(acc, p_half, rounded_scaled_b(ad, ws).transpose(), true);
  }
  y = acc.template cast<typename Y::Scalar>();
}

/// Y = (or +=) X W0^T + bias + ((X A^T) Λd) B^T Λb in the low-rank order.
template <class X, class W, class Bias, class Y>
void forward(const X& x, const W& w0, const Bias& bias, const adapter<float>& ad,
             forward_context<float>* ctx, Y& y, assign_mode mode, workspace<float>& ws) {
  const index n = x.rows();
  const index rank = ad.rank();
  const double dropout = ctx != nullptr ? ad.options().dropout : 0.0;
  // P = drop(X) A^T in float32, kept in the context for backward.
  float* p_data = ctx != nullptr ? ctx->begin_step(n, rank, dropout).data()
                                 : ws.get(slot_thin, n, rank).data();
  Eigen::Map<Eigen::MatrixXf> p(p_data, n, rank);
  project(x, ad, ctx != nullptr ? &ctx->mask_key() : nullptr, p, ws);
  adapted_product(x, p, w0, bias, ad, y, mode, ws);
  if (ctx != nullptr) ctx->finish_step();
}

/// grad_b, grad_d from M = G^T P (out x rank) with P rounded to bfloat16, then one float32 pass
/// (at one row, from two products against B).
template <class G>
void parameter_gradients(const G& g, const adapter<float>& ad, const forward_context<float>& ctx,
                         gradients<float>& out, workspace<float>& ws) {
  const auto& p = ctx.projected();
  const auto b = ad.shared_projection().b_bfloat16(ad.out_features(), ad.rank());
  if (plan_for(request_for(product_kind::parameter_gradients, extents_of(p.rows(), ad))).single_row) {
    // One row: grad_b = colsum(G ⊙ Q) with Q = bf16(P Λd) B^T, grad_d = colsum(T ⊙ P) with
    // T = bf16(G Λb) B; two products against B instead of forming the out x rank M = G^T P.
    if (ad.options().train_b) {
      auto pd_half = ws.get_bfloat16(half_thin, p.rows(), p.cols());
      pd_half = (p * ad.lambda_d().asDiagonal()).template cast<half>();
      auto q = ws.get(slot_scaled_b, p.rows(), ad.out_features());
      gemm(q, pd_half, b.transpose(), false);
      out.lambda_b.noalias() += g.template cast<float>().cwiseProduct(q).colwise().sum().transpose();
    }
    if (ad.options().train_d) {
      auto gb_half = ws.get_bfloat16(half_scaled_b, g.rows(), g.cols());
      gb_half = (g.template cast<float>() * ad.lambda_b().asDiagonal()).template cast<half>();
      auto t = ws.get(slot_weight, p.rows(), ad.rank());
      gemm(t, gb_half, b, false);
      out.lambda_d.noalias() += t.cwiseProduct(p).colwise().sum().transpose();
    }
    return;
  }
  auto p_half = ws.get_bfloat16(half_thin, p.rows(), p.cols());
  p_half = p.template cast<half>();
  auto m_buffer = ws.get(slot_weight, ad.out_features(), ad.rank());
  Eigen::Map<row_matrix<float>> m(m_buffer.data(), ad.out_features(), ad.rank());
  gemm(m, g.transpose(), p_half, false);

  finish_parameter_gradients(m, b, ad, out);
}

/// acc += G W0 (float32 accumulator) and t = (or +=, per `t_mode`) T Λd with T = (G Λb) B, from
/// bfloat16 factors; add_back_projection finishes grad_X. Sibling groups sum t over siblings.
template <class G, class W, class Acc, class Thin>
void input_gradient_terms(const G& g, const W& w0, const adapter<float>& ad, Acc& acc, Thin& t,
                          assign_mode t_mode, workspace<float>& ws) {
  const index n = g.rows();
  with_weight(ad, w0, [&](const auto& w) { gemm(acc, g, w, true); });
  if (thin_side_scales(product_kind::input_gradient, n, ad)) {
    auto g_half = laid_out_like<G>(ws.get_bfloat16(half_scaled_b, n, ad.out_features()));
    g_half = (g.template cast<float>() * ad.lambda_b().asDiagonal()).template cast<half>();
    auto u = ws.get(slot_scaled_b, n, ad.rank());
    gemm(u, g_half, ad.shared_projection().b_bfloat16(ad.out_features(), ad.rank()), false);
    if (t_mode == assign_mode::accumulate) {
      t += u * ad.lambda_d().asDiagonal();
    } else {
      t = u * ad.lambda_d().asDiagonal();
    }
  } else {
    gemm(t, g, rounded_scaled_b(ad, ws), t_mode == assign_mode::accumulate);
  }
}

/// acc += mask ⊙ (t A) / (1 - p) with t rounded to bfloat16 against the bfloat16 A.
template <class Thin, class Acc>
void add_back_projection(const Thin& t, const adapter<float>& ad, const dropout_key& key, Acc& acc,
                         workspace<float>& ws) {
  auto t_half = ws.get_bfloat16(half_thin, t.rows(), t.cols());
  t_half = t.template cast<half>();
  cpu::add_back_projection(t_half, ad.shared_projection().a_bfloat16(ad.in_features(), ad.rank()), key, acc, ws);
}

/// grad_X = G W0 + mask ⊙ ((G Λb B Λd) A) / (1 - p), with T = G Λb B Λd rounded to bfloat16.
template <class G, class W, class Dx>
void input_gradient(const G& g, const W& w0, const adapter<float>& ad, const dropout_key& key,
                    Dx& dx, assign_mode mode, workspace<float>& ws) {
  auto acc = accumulator(dx, mode, ws);
  auto t = ws.get(slot_thin, g.rows(), ad.rank());
  input_gradient_terms(g, w0, ad, acc, t, assign_mode::overwrite, ws);
  add_back_projection(t, ad, key, acc, ws);
  dx = acc.template cast<typename Dx::Scalar>();
}

/// One sibling's share of the group's one-pass backward from a forward that kept
/// Q = (P Λd) B^T: grad_b += colsum(G ⊙ Q), U = (G Λb) B from bfloat16 factors,
/// grad_d += colsum(U ⊙ P), s = (or +=, per `s_mode`) U Λd, acc += G W0.
template <class G, class W, class P, class Acc, class S>
void sibling_backward_terms(const G& g, const W& w0, const adapter<float>& ad, const Eigen::MatrixXf& q,
                            const P& p, gradients<float>& out, Acc& acc, S& s, assign_mode s_mode,
                            workspace<float>& ws) {
  const index n = g.rows();
  if (ad.options().train_b) out.lambda_b.noalias() += g.template cast<float>().cwiseProduct(q).colwise().sum().transpose();
  auto u = ws.get(slot_scaled_b, n, ad.rank());
  if (thin_side_scales(product_kind::input_gradient, n, ad)) {
    auto g_half = laid_out_like<G>(ws.get_bfloat16(half_scaled_b, n, ad.out_features()));
    g_half = (g.template cast<float>() * ad.lambda_b().asDiagonal()).template cast<half>();
    gemm(u, g_half, ad.shared_projection().b_bfloat16(ad.out_features(), ad.rank()), false);
  } else {
    gemm(u, g, rounded_scaled_b(ad, ws, /*with_d=*/false), false);
  }
  if (ad.options().train_d) out.lambda_d.noalias() += u.cwiseProduct(p).colwise().sum().transpose();
  if (s_mode == assign_mode::accumulate) {
    s += u * ad.lambda_d().asDiagonal();
  } else {
    s = u * ad.lambda_d().asDiagonal();
  }
  with_weight(ad, w0, [&](const auto& w) { gemm(acc, g, w, true); });
}

/// W = bf16(keep W + sign ΔW) with ΔW = (Λb B Λd) A in float32 from the bfloat16-rounded A and B:
/// PEFT 0.21's merge into a bfloat16 weight (its adapter tensors are float32, so ΔW stays float32
/// and the in-place add rounds once).
template <class Dst>
void merge(const adapter<float>& ad, Dst& w, bool keep, float sign, workspace<float>& ws) {
  const index out = ad.out_features();
  const index in = ad.in_features();
  const index rank = ad.rank();
  const auto& shared = ad.shared_projection();
  // A and Λb B Λd in float32, row-major like the rounded copies they are read from.
  using rows = row_matrix<half>;
  auto a = laid_out_like<rows>(ws.get(slot_tile, rank, in));
  a = shared.a_bfloat16(in, rank).template cast<float>();
  auto bbd = laid_out_like<rows>(ws.get(slot_scaled_b, out, rank));
  fold_scales(ad, sign, bbd);
  // ΔW in the target's storage order, then one rounding per element, bf16(float(W) + ΔW), in
  // memory order (Eigen's packet casts vectorise both ways).
  const auto update = [&](auto&& target) {
    auto delta = laid_out_like<std::decay_t<decltype(target)>>(ws.get(slot_weight, out, in));
    gemm(delta, bbd, a, false);
    if (keep) {
      target = (target.template cast<float>() + delta).template cast<half>();
    } else {
      target = delta.template cast<half>();
    }
  };
  if (ad.options().fan_in_fan_out) {
    update(w.transpose());
  } else {
    update(w);
  }
}

}  // namespace vera::detail::cpu::bfloat16_path
