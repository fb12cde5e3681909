// SPDX-License-Identifier: Apache-2.0
// CPU evaluators of the mixed-adapter backward: shared GEMMs, per-adapter segment sums.
#pragma once

#include <algorithm>
#include <string>

#include <Eigen/Core>

#include "vera/backend/cpu/gemm.hpp"
#include "vera/backend/cpu/mixed_bfloat16.hpp"
#include "vera/backend/cpu/mixed_common.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/expr/cost.hpp"
#include "vera/expr/mixed_backward.hpp"

namespace vera {

namespace detail::cpu::mixed {

// One adapter on every row: the core's algorithm. grad_b and grad_d come from one GEMM,
// M = G^T P (out x rank): grad_b[j] = s Σk B[j,k] d[k] M[j,k], grad_d[k] = s Σj b[j] B[j,k] M[j,k];
// dX takes the order the cost model picks.
template <class T, class G, class W, class DX>
void backward_one_adapter(const adapter_set<T>& set, const mixed_context<T>& ctx, index column,
                          const G& g, const W* w0, mixed_workspace<T>& ws, bool workspace_reused,
                          order requested, mixed_gradients<T>* grads, DX* dx, assign_mode mode) {
  const adapter_options& options = set.column_options(column);
  const index out = set.out_features();
  const index rank = set.rank();
  if (grads != nullptr) {
    zero_unassigned(grads->lambda_b, mode, [&](index c) { return c == column && options.train_b; });
    zero_unassigned(grads->lambda_d, mode, [&](index c) { return c == column && options.train_d; });
  }
  if (grads != nullptr && (options.train_b || options.train_d)) {
    auto m_buffer = ws.get(slot_sums, out, rank);
    // Row-major view of the same memory, so each row of M pairs with a contiguous row of B.
    Eigen::Map<row_matrix<T>> m(m_buffer.data(), out, rank);
    gemm(m, g.transpose(), ctx.projected(), false);
    finish_one_adapter(m, set.b(), set, column, *grads, mode);
  }
  if (dx == nullptr) return;

  const bool dropout = options.dropout > 0.0;
  auto request = request_for(product_kind::input_gradient, {g.rows(), set.in_features(), out, rank}, requested);
  request.workspace_reused = workspace_reused;
  request.merged_valid = !dropout;
  const order chosen = plan_for(request).chosen;
  const auto bbd = folded_b(set, column, ws);
  with_weight(set, *w0, [&](const auto& w) {
    if (chosen == order::merged) {
      auto merged = ws.get(slot_wide, out, set.in_features());
      fold_into_weight(w, bbd, set.a(), merged);
      gemm(*dx, g, merged, mode == assign_mode::accumulate);
      return;
    }
    gemm(*dx, g, w, mode == assign_mode::accumulate);
    auto t = ws.get(slot_thin, g.rows(), rank);
    gemm(t, g, bbd, false);  // T Λd s, with T = (G Λb) B
    add_times_a(t, set.a(), set, ctx.row_columns().data(), ctx.mask_key(), dropout, ws, *dx);
  });
}

/// Everything a mixed backward computes, sharing T = (G ⊙ b_a(i)) B between grad_d and dX:
///   grad_d[a] += s_a Σ_{i in a} T_i ⊙ P_i                         (pass over n x rank)
///   grad_b[a] += Σ_{i in a} G_i ⊙ Q_i,  Q = (P ⊙ s d_a(i)) B^T    (GEMM + pass over n x out;
///                                           the pass only when the forward kept Q as Z)
///   dX (+)= G W0 + drop((T ⊙ s d_a(i)) A)                           (two GEMMs)
/// `g` is evaluated and `batch` summarises its rows, wanting b and d only with `grads` (see
/// backward). `grads` and `dx` may be null;
/// gradients must be sized by the caller. On overwrite every gradient column is written (zero
/// where nothing flows).
template <class T, class G, class W, class DX>
void backward_pass(const adapter_set<T>& set, const mixed_context<T>& ctx, const G& g, const batch_rows& batch,
                   const W* w0, mixed_workspace<T>& ws, bool workspace_reused, order requested,
                   mixed_gradients<T>* grads, DX* dx, assign_mode mode) {
  const index n = g.rows();
  const index out = set.out_features();
  const index rank = set.rank();
  const index* columns = ctx.row_columns().data();
  const auto& p = ctx.projected();

  if (batch.adapter_rows == n && n > 0 && !batch.several) {
    backward_one_adapter(set, ctx, batch.single_column, g, w0, ws, workspace_reused, requested, grads, dx, mode);
    return;
  }
  const row_plan<T> plan(set, columns, n, ws);
  zero_untrained(grads, plan, set, batch, mode);

  if (dx != nullptr) {
    with_weight(set, *w0, [&](const auto& w) {
      gemm(*dx, g, w, mode == assign_mode::accumulate);
    });
  }
  if (batch.adapter_rows == 0 || (!batch.want_b && !batch.want_d && dx == nullptr)) return;

  const bool need_t = batch.want_d || dx != nullptr;
  auto t = ws.get(slot_thin, need_t ? n : 0, rank);
  if (need_t) {
    auto gb = ws.get(slot_wide, n, out);
    scale_by_b(g, plan, gb);
    gemm(t, gb, set.b(), false);
  }
  gradient_sums(set, ctx, p, plan, batch, need_t, t, dx != nullptr, g,
                [&](const auto& s) {
                  auto q = ws.get(slot_wide, n, out);
                  gemm(q, s, set.b().transpose(), false);
                  return q;
                },
                ws, grads, mode);
  if (dx != nullptr) add_times_a(t, set.a(), set, columns, ctx.mask_key(), batch.dropout, ws, *dx);
}

/// The mixed backward of `e` (G of type GD), by the bfloat16 path for bfloat16 storage: the one
/// call each evaluator below makes. G is evaluated and its rows summarised here, once for either
/// path (b and d are wanted only where there are gradients to write). `grads` and `dx` may be null.
template <class E, class GD, class W, class T, class DX>
void backward(const E& e, const GD& g_expr, const W* w0, order requested, mixed_gradients<T>* grads, DX* dx,
              assign_mode mode) {
  scratch<T> local(e.scratch());
  // Evaluate an expression-valued G once: it feeds up to four products and passes.
  const typename Eigen::internal::nested_eval<GD, 4>::type g(g_expr);
  batch_rows batch = summarise_rows(e.set(), e.context().row_columns().data(), g.rows());
  batch.want_b = batch.want_b && grads != nullptr;
  batch.want_d = batch.want_d && grads != nullptr;
  if constexpr (vera::detail::is_bfloat16<GD>) {
    bfloat16_path::backward(e.set(), e.context(), g, batch, w0, local.get(), grads, dx, mode);
  } else {
    backward_pass(e.set(), e.context(), g, batch, w0, local.get(), local.reused(), requested, grads, dx, mode);
  }
}

}  // namespace detail::cpu::mixed

namespace detail {

/// \brief Parameter gradients of every adapter in the batch, on the CPU.
template <class Exec, class GD, class T, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::mixed_parameter_gradient_expr<Exec, GD, T>& e, mixed_gradients<T>& out,
              assign_mode mode) {
  // No dX: a placeholder type in G's storage.
  using matrix = Eigen::Matrix<typename GD::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  detail::cpu::mixed::backward(e, e.upstream(), static_cast<const matrix*>(nullptr), order::automatic, &out,
                               static_cast<matrix*>(nullptr), mode);
}

/// \brief dL/dX of a mixed batch, on the CPU.
template <class Exec, class GD, class WD, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::mixed_input_gradient_expr<Exec, GD, WD, T>& e, Dst& dx, assign_mode mode) {
  vera::detail::check_no_alias("vera::mixed_input_gradient", dx, "G", e.upstream());
  vera::detail::check_no_alias("vera::mixed_input_gradient", dx, "W0", e.w0());
  if constexpr (vera::detail::is_bfloat16<GD>) {
    detail::cpu::bfloat16_path::require_low_rank("vera::mixed_input_gradient", e.requested_order());
  }
  detail::cpu::mixed::backward(e, e.upstream(), &e.w0(), e.requested_order(),
                               static_cast<mixed_gradients<T>*>(nullptr), &dx, mode);
}

/// \brief Parameter gradients and dL/dX of a mixed batch in one pass, on the CPU.
template <class Exec, class GD, class WD, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::mixed_backward_expr<Exec, GD, WD, T>& e, mixed_gradients<T>& out, Dst& dx,
              assign_mode mode) {
  vera::detail::check_no_alias("vera::mixed_backward", dx, "G", e.upstream());
  vera::detail::check_no_alias("vera::mixed_backward", dx, "W0", e.w0());
  if constexpr (vera::detail::is_bfloat16<GD>) {
    detail::cpu::bfloat16_path::require_low_rank("vera::mixed_backward", e.requested_order());
  }
  detail::cpu::mixed::backward(e, e.upstream(), &e.w0(), e.requested_order(), &out, &dx, mode);
}

}  // namespace detail

}  // namespace vera
