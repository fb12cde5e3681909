// SPDX-License-Identifier: Apache-2.0
// CPU evaluator of the mixed-adapter forward: the shared GEMMs plus per-row gathers.
#pragma once

#include <algorithm>

#include <Eigen/Core>

#include "vera/backend/cpu/forward.hpp"
#include "vera/backend/cpu/gemm.hpp"
#include "vera/backend/cpu/mixed_bfloat16.hpp"
#include "vera/backend/cpu/mixed_common.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/expr/cost.hpp"
#include "vera/expr/mixed_forward.hpp"

namespace vera {

namespace detail::cpu::mixed {

/// The float and double mixed forward (see the evaluator below for the three ways): Y = (or +=)
/// bias + X W0^T + the adapter term, with X evaluated, its rows resolved into `columns`/`rows`,
/// and P kept in `ctx` for a training forward.
template <class X, class W, class Bias, class T, class Y>
void forward_pass(const X& x, const W& w0, const Bias& bias, const adapter_set<T>& set, const index* columns,
                  const vera::detail::resolved_rows& rows, mixed_context<T>* ctx, Y& y, assign_mode mode,
                  mixed_workspace<T>& ws, bool workspace_reused, order requested) {
  const index n = x.rows();
  const index rank = set.rank();
  const bool dropout = ctx != nullptr && rows.dropout;
  const bool one_adapter = rows.single_column >= 0;
  bool merged_order = false;
  if (one_adapter && rows.adapter_rows == n && !dropout) {
    auto request = request_for(product_kind::forward, extents_of(n, set), requested);
    request.keeps_projection = ctx != nullptr;
    request.workspace_reused = workspace_reused;
    merged_order = plan_for(request).chosen == order::merged;
  }

  const bool has_p = ctx != nullptr || (rows.adapter_rows > 0 && !merged_order);
  auto p = forward_projection(ctx, columns, n, rank, has_p, ws);
  if (has_p) {
    project_input(x, set.a(), set, columns, dropout ? &ctx->mask_key() : nullptr, p,
                  [&](index r, index c) { return ws.get(slot_tile, r, c); });
  }

  initialise_output(y, bias, mode);
  with_weight(set, w0, [&](const auto& w) {
    if (merged_order) {
      auto merged = ws.get(slot_wide, set.out_features(), set.in_features());
      fold_into_weight(w, folded_b(set, rows.single_column, ws), set.a(), merged);
      gemm(y, x, merged.transpose(), true);
      return;
    }
    gemm(y, x, w.transpose(), true);
  });

  if (rows.adapter_rows > 0 && !merged_order) {
    if (one_adapter) {
      const auto bbd = folded_b(set, rows.single_column, ws);
      if (rows.adapter_rows == n) {
        gemm(y, p, bbd.transpose(), true);
      } else {
        auto s = ws.get(slot_thin, n, rank);
        for_each_coeff<false>(n, rank, [&](index i, index k) { s(i, k) = columns[i] >= 0 ? p(i, k) : T(0); });
        gemm(y, s, bbd.transpose(), true);
      }
    } else {
      const row_plan<T> plan(set, columns, n, ws);
      auto s = ws.get(slot_thin, n, rank);
      using thin = decltype(s);
      rank_pass(p, plan, static_cast<thin*>(nullptr), false, static_cast<thin*>(nullptr), &s);
      if (ctx != nullptr) {
        // Kept in the context: grad_b is a segment sum of G ⊙ Z, so the backward skips a GEMM.
        auto& z = ctx->keep_products(n, set.out_features());
        gemm(z, s, set.b().transpose(), false);
        add_scaled_by_b(z, plan, y);
      } else if constexpr (row_major<Y>) {
        // Z in the destination's layout, so the gather pass runs along both in storage order.
        auto z = ws.get(slot_wide, set.out_features(), n).transpose();
        gemm(z, s, set.b().transpose(), false);
        add_scaled_by_b(z, plan, y);
      } else {
        auto z = ws.get(slot_wide, n, set.out_features());
        gemm(z, s, set.b().transpose(), false);
        add_scaled_by_b(z, plan, y);
      }
    }
  }
  if (ctx != nullptr) ctx->finish_step(&set, set.version());
}

}  // namespace detail::cpu::mixed

namespace detail {

/// \brief Evaluates a mixed forward into `y` on the CPU.
///
/// Y = bias + X W0^T, then the adapter term in one of three ways:
/// - one adapter on every row, no dropout: the core's single-adapter algorithm, in the order its
///   cost model picks or `.with_order()` forces (only here is the merged order possible: it needs one weight for all rows);
/// - one adapter on some rows: S = P with base-model rows zeroed, Y += S (s Λb B Λd)^T;
/// - several adapters: S = P ⊙ (s d)[a(i)] (a pass over n x rank), Z = S B^T (the shared GEMM),
///   Y += Z ⊙ b[a(i)] (a pass over n x out). No per-adapter GEMM.
/// bfloat16 X and W0 take the same three ways in the low-rank order, with bfloat16 factors and
/// float32 accumulators (mixed::bfloat16_path::forward); the first is the single-adapter
/// bfloat16 path itself.
template <class Exec, class XD, class WD, class Bias, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::mixed_forward_expr<Exec, XD, WD, Bias, T>& e, Dst& y, assign_mode mode) {
  vera::detail::check_forward_aliases("vera::mixed_forward", y, e);

  if constexpr (detail::is_bfloat16<XD>) {
    // Checked before a context or the destination is touched.
    detail::cpu::bfloat16_path::require_low_rank("vera::mixed_forward", e.requested_order());
  }
  const adapter_set<T>& set = e.set();
  // The set may have changed since the expression was built: check again before writing.
  detail::require_nothing_merged("vera::mixed_forward", set);
  // Evaluate an expression-valued X once: it feeds two products.
  const typename Eigen::internal::nested_eval<std::decay_t<decltype(e.x())>, 4>::type x(e.x());
  const index n = x.rows();
  detail::cpu::mixed::scratch<T> scratch(e.scratch());
  mixed_workspace<T>& ws = scratch.get();
  index* columns = ws.indices(detail::cpu::mixed::indices_columns, n);
  const vera::detail::resolved_rows rows = vera::detail::resolve_rows(set, e.assignment(), n, columns, "vera::mixed_forward");

  if constexpr (detail::is_bfloat16<XD>) {
    detail::cpu::mixed::bfloat16_path::forward(x, e.w0(), e.bias(), set, columns, rows, e.context(), y, mode, ws);
  } else {
    detail::cpu::mixed::forward_pass(x, e.w0(), e.bias(), set, columns, rows, e.context(), y, mode, ws,
                                     scratch.reused(), e.requested_order());
  }
}

}  // namespace detail

}  // namespace vera
