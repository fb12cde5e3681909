// SPDX-License-Identifier: Apache-2.0
// The mixed-batch evaluators' bfloat16 path: bfloat16 storage, float32 accumulation, b and d in float32.
#pragma once

#include <algorithm>
#include <optional>
#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter_set.hpp"
#include "vera/adapter/mixed_context.hpp"
#include "vera/adapter/mixed_gradients.hpp"
#include "vera/adapter/mixed_workspace.hpp"
#include "vera/adapter/resolve_rows.hpp"
#include "vera/backend/cpu/bfloat16.hpp"
#include "vera/backend/cpu/gemm.hpp"
#include "vera/backend/cpu/mixed_common.hpp"
#include "vera/core/dropout.hpp"

namespace vera::detail::cpu::mixed::bfloat16_path {

// A mixed batch with bfloat16 X, W0 and G computes as the single-adapter bfloat16 path does
// (backend/cpu/bfloat16.hpp): A and B rounded to bfloat16 once per projection, every GEMM on
// bfloat16 factors with a float32 accumulator, b, d, P and the gradients of b and d in float32,
// thin operands rounded right before the GEMM that reads them, each output rounded once from its
// float32 accumulator. A batch whose rows all use one adapter runs that path itself, on the
// adapter as a standalone vera::adapter, so it gives the single-adapter call's bits.

using half = cpu::bfloat16_path::half;

/// bfloat16 slots of mixed_workspace, shared with its single() workspace: thin and tile are the
/// single path's own, wide takes the slot it uses only for a safe merge, so that none of them is
/// the single path's Λb B Λd, which a batch of one adapter and base rows reads meanwhile.
enum half_slot : int {
  half_thin = cpu::bfloat16_path::half_thin,
  half_tile = cpu::bfloat16_path::half_tile,
  half_wide = 3
};

/// The adapter in `column` as a standalone adapter, its scale folded into lambda_b as
/// adapter_set::to_adapter folds it, for the single-adapter path. Kept in the workspace and
/// refreshed in place, so a steady state allocates nothing.
inline const adapter<float>& standalone(const adapter_set<float>& set, index column, mixed_workspace<float>& ws) {
  std::optional<adapter<float>>& kept = ws.standalone();
  const adapter_options& options = set.column_options(column);
  const auto fits = [&](const adapter<float>& ad) {
    const adapter_options& o = ad.options();
    return ad.shared_projection().shares_storage_with(set.shared_projection()) &&
           ad.in_features() == set.in_features() && ad.out_features() == set.out_features() &&
           ad.rank() == set.rank() && o.train_b == options.train_b && o.train_d == options.train_d &&
           o.dropout == options.dropout && o.fan_in_fan_out == options.fan_in_fan_out;
  };
  if (!kept.has_value() || !fits(*kept)) {
    kept.emplace(set.shared_projection(), set.in_features(), set.out_features(), options);
  }
  kept->lambda_b() = set.column_scale(column) * set.lambda_b_matrix().col(column);
  kept->lambda_d() = set.lambda_d_matrix().col(column);
  return *kept;
}

/// The context's mask key with the probability of the adapter in `column`, as the single path
/// reads it when every row uses that adapter.
inline dropout_key column_key(const adapter_set<float>& set, index column, const dropout_key& key) {
  dropout_key with_probability = key;
  with_probability.probability = set.column_options(column).dropout;
  return with_probability;
}

/// P = drop(X) A^T in float32 from bfloat16 X and A; with a dropout key each row is masked under
/// its adapter's dropout, in bfloat16 tiles, as the single path masks its input.
template <class X, class P>
void project(const X& x, const adapter_set<float>& set, const index* columns, const dropout_key* key, P& p,
             mixed_workspace<float>& ws) {
  project_input(x, set.shared_projection().a_bfloat16(set.in_features(), set.rank()), set, columns, key, p,
                [&](index rows, index cols) { return ws.get_bfloat16(half_tile, rows, cols); });
}

/// Y = (or +=) X W0^T + bias + s_a(i) ((P ⊙ d_a(i)) B^T) ⊙ b_a(i) with bfloat16 storage.
///
/// Every row on one adapter: the single-adapter bfloat16 path on it (its own plan, its dropout
/// masks). Otherwise into a float32 accumulator laid out as Y: bias + X W0^T, then with one
/// adapter bf16(S) bf16(s Λb B Λd)^T, S = P with base-model rows zeroed; with several,
/// S = P ⊙ (s d)[a(i)], Z = bf16(S) B^T (kept in a training context for grad_b) and Z ⊙ b[a(i)].
template <class X, class W, class Bias, class Y>
void forward(const X& x, const W& w0, const Bias& bias, const adapter_set<float>& set, const index* columns,
             const vera::detail::resolved_rows& rows, mixed_context<float>* ctx, Y& y, assign_mode mode,
             mixed_workspace<float>& ws) {
  const index n = x.rows();
  const index rank = set.rank();
  const bool dropout = ctx != nullptr && rows.dropout;
  const bool has_p = ctx != nullptr || rows.adapter_rows > 0;
  auto p = forward_projection(ctx, columns, n, rank, has_p, ws);

  if (rows.single_column >= 0 && rows.adapter_rows == n) {
    const adapter<float>& ad = standalone(set, rows.single_column, ws);
    const dropout_key key = dropout ? column_key(set, rows.single_column, ctx->mask_key()) : dropout_key{};
    cpu::bfloat16_path::project(x, ad, dropout ? &key : nullptr, p, ws.single());
    cpu::bfloat16_path::adapted_product(x, p, w0, bias, ad, y, mode, ws.single());
    if (ctx != nullptr) ctx->finish_step(&set, set.version());
    return;
  }

  if (has_p) project(x, set, columns, dropout ? &ctx->mask_key() : nullptr, p, ws);
  auto acc = cpu::bfloat16_path::accumulator(y, mode, ws.single());
  if constexpr (!std::is_same_v<Bias, no_bias_t>) {
    initialise_output(acc, bias.template cast<float>(), assign_mode::accumulate);
  }
  with_weight(set, w0, [&](const auto& w) { gemm(acc, x, w.transpose(), true); });
  if (rows.adapter_rows > 0) {
    auto s_half = ws.get_bfloat16(half_thin, n, rank);
    if (rows.single_column >= 0) {
      // One adapter and base-model rows: its folded s Λb B Λd, as the single path folds it.
      for_each_coeff<false>(n, rank, [&](index i, index k) {
        s_half(i, k) = columns[i] >= 0 ? half(p(i, k)) : half(0.0f);
      });
      const adapter<float>& ad = standalone(set, rows.single_column, ws);
      gemm(acc, s_half, cpu::bfloat16_path::rounded_scaled_b(ad, ws.single()).transpose(), true);
    } else {
      const row_plan<float> plan(set, columns, n, ws);
      auto s = ws.get(slot_thin, n, rank);
      using thin = decltype(s);
      rank_pass(p, plan, static_cast<thin*>(nullptr), false, static_cast<thin*>(nullptr), &s);
      s_half = s.cast<half>();
      const auto b = set.shared_projection().b_bfloat16(set.out_features(), rank);
      if (ctx != nullptr) {
        // Kept in the context: grad_b is a segment sum of G ⊙ Z, so the backward skips a GEMM.
        auto& z = ctx->keep_products(n, set.out_features());
        gemm(z, s_half, b.transpose(), false);
        add_scaled_by_b(z, plan, acc);
      } else {
        // Z in the accumulator's layout, so the gather pass runs along both in storage order.
        auto z = cpu::bfloat16_path::laid_out_like<Y>(ws.get(slot_wide, n, set.out_features()));
        gemm(z, s_half, b.transpose(), false);
        add_scaled_by_b(z, plan, acc);
      }
    }
  }
  y = acc.template cast<typename Y::Scalar>();
  if (ctx != nullptr) ctx->finish_step(&set, set.version());
}

/// dst += U A with U rounded to bfloat16 against the bfloat16 A, each row's dropout mask on the
/// product when `dropout`.
template <class U, class Dst>
void add_times_a(const U& u, const adapter_set<float>& set, const index* columns, const dropout_key& key,
                 bool dropout, mixed_workspace<float>& ws, Dst& dst) {
  auto u_half = ws.get_bfloat16(half_thin, u.rows(), u.cols());
  u_half = u.template cast<half>();
  mixed::add_times_a(u_half, set.shared_projection().a_bfloat16(set.in_features(), set.rank()), set, columns, key,
                     dropout, ws, dst);
}

/// The mixed backward (see backward_pass) with bfloat16 G and W0: parameter gradients in float32,
/// dX from a float32 accumulator in its storage order, rounded once.
///
/// Every row on one adapter: M = G^T bf16(P) for the gradients, and the single-adapter bfloat16
/// path's grad_X on the adapter (its own plan and mask). Otherwise T = bf16(G ⊙ b_a(i)) B serves
/// grad_d and dX as in backward_pass, grad_b sums G ⊙ Q with Q = bf16(S) B^T (or the kept Z), and
/// dX += drop(bf16(T ⊙ s d_a(i)) A).
/// `g` is evaluated and `batch` summarises its rows (see mixed::backward).
template <class G, class W, class DX>
void backward(const adapter_set<float>& set, const mixed_context<float>& ctx, const G& g, const batch_rows& batch,
              const W* w0, mixed_workspace<float>& ws, mixed_gradients<float>* grads, DX* dx, assign_mode mode) {
  const index n = g.rows();
  const index out = set.out_features();
  const index rank = set.rank();
  const index* columns = ctx.row_columns().data();
  const auto& p = ctx.projected();
  const auto b = set.shared_projection().b_bfloat16(out, rank);

  if (batch.adapter_rows == n && n > 0 && !batch.several) {
    if (grads != nullptr) {
      const adapter_options& options = set.column_options(batch.single_column);
      zero_unassigned(grads->lambda_b, mode, [&](index c) { return c == batch.single_column && options.train_b; });
      zero_unassigned(grads->lambda_d, mode, [&](index c) { return c == batch.single_column && options.train_d; });
      if (batch.want_b || batch.want_d) {
        auto p_half = ws.get_bfloat16(half_thin, n, rank);
        p_half = p.cast<half>();
        auto m_buffer = ws.get(slot_sums, out, rank);
        Eigen::Map<row_matrix<float>> m(m_buffer.data(), out, rank);
        gemm(m, g.transpose(), p_half, false);
        finish_one_adapter(m, b, set, batch.single_column, *grads, mode);
      }
    }
    if (dx != nullptr) {
      const adapter<float>& ad = standalone(set, batch.single_column, ws);
      cpu::bfloat16_path::input_gradient(g, *w0, ad, column_key(set, batch.single_column, ctx.mask_key()), *dx, mode,
                                         ws.single());
    }
    return;
  }

  const row_plan<float> plan(set, columns, n, ws);
  zero_untrained(grads, plan, set, batch, mode);

  const auto g_float = g.template cast<float>();
  const bool need_t = batch.adapter_rows > 0 && (batch.want_d || dx != nullptr);
  auto t = ws.get(slot_thin, need_t ? n : 0, rank);
  if (need_t) {
    // T = bf16(G ⊙ b_a(i)) B, the scaled G in its own storage order.
    auto gb = cpu::bfloat16_path::laid_out_like<std::decay_t<decltype(g)>>(ws.get(slot_wide, n, out));
    scale_by_b(g_float, plan, gb);
    auto gb_half = cpu::bfloat16_path::laid_out_like<std::decay_t<decltype(g)>>(ws.get_bfloat16(half_wide, n, out));
    gb_half = gb.template cast<half>();
    gemm(t, gb_half, b, false);
  }
  // Q = bf16(S) B^T, in G's storage order.
  gradient_sums(set, ctx, p, plan, batch, need_t, t, dx != nullptr, g_float,
                [&](const auto& s) {
                  auto s_half = ws.get_bfloat16(half_thin, n, rank);
                  s_half = s.template cast<half>();
                  auto q = cpu::bfloat16_path::laid_out_like<std::decay_t<decltype(g)>>(ws.get(slot_wide, n, out));
                  gemm(q, s_half, b.transpose(), false);
                  return q;
                },
                ws, grads, mode);
  if (dx != nullptr) {
    auto acc = cpu::bfloat16_path::accumulator(*dx, mode, ws.single());
    with_weight(set, *w0, [&](const auto& w) { gemm(acc, g, w, true); });
    if (batch.adapter_rows > 0) add_times_a(t, set, columns, ctx.mask_key(), batch.dropout, ws, acc);
    *dx = acc.template cast<typename DX::Scalar>();
  }
}

}  // namespace vera::detail::cpu::mixed::bfloat16_path
