// SPDX-License-Identifier: Apache-2.0
// CPU evaluator of the forward expression: the only place a forward is computed on the host.
#pragma once

#include <Eigen/Core>

#include "vera/backend/cpu/bfloat16.hpp"
#include "vera/backend/cpu/common.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/expr/forward.hpp"

namespace vera {

namespace detail::cpu {

// P = drop(X) A^T, tile by tile so the masked input never exists as a whole n x in matrix.
template <class X, class A, class P, class T>
void project_input(const X& x, const A& a, const dropout_key* key, P& p, workspace<T>& ws) {
  if (key == nullptr || key->probability == 0.0) {
    gemm(p, x, a.transpose(), false);
    return;
  }
  for (index first = 0; first < x.rows(); first += dropout_tile_rows) {
    const index rows = std::min(dropout_tile_rows, x.rows() - first);
    auto tile = ws.get(slot_tile, rows, x.cols());
    masked_rows(x, first, *key, tile);
    gemm(p.middleRows(first, rows), tile, a.transpose(), false);
  }
}

/// Y = (or +=) X W0^T + bias + adapter term, as `how` says. The low-rank order reads
/// P = drop(X) A^T, which the caller has filled; the merged order does not read it. Sibling
/// groups call this once per sibling with their shared P.
template <class X, class P, class W, class Bias, class T, class Y>
void adapted_product(const X& x, const P& p, const W& w0, const Bias& bias, const adapter<T>& ad,
                     const plan& how, Y& y, assign_mode mode, workspace<T>& ws) {
  initialise_output(y, bias, mode);
  with_weight(ad, w0, [&](const auto& w) {
    if (how.chosen == order::merged) {
      auto merged = ws.get(slot_weight, ad.out_features(), ad.in_features());
      fold_into_weight(w, scaled_b(ad, ws), ad.a(), merged);
      gemm(y, x, merged.transpose(), true);
      return;
    }
    if (how.transposed) {
      // Y += (W0 X^T + Λb B Λd P^T)^T: every GEMM has the output's long side first.
      auto yt = ws.get(slot_weight, ad.out_features(), x.rows());
      gemm(yt, w, x.transpose(), false);
      if (how.thin_side_scales) {
        auto zt = ws.get(slot_tile, ad.out_features(), x.rows());
        thin_q(p, ad, ws, zt.transpose());
        y += (yt + ad.lambda_b().asDiagonal() * zt).transpose();
      } else {
        gemm(yt, scaled_b(ad, ws), p.transpose(), true);
        y += yt.transpose();
      }
      return;
    }
    gemm(y, x, w.transpose(), true);
    if (how.thin_side_scales) {
      // Y += ((P Λd) Bᵀ) Λb: the scaled-B slot and the weight slot are free in this order.
      auto z = ws.get(slot_weight, x.rows(), ad.out_features());
      thin_q(p, ad, ws, z);
      y += z * ad.lambda_b().asDiagonal();
      return;
    }
    gemm(y, p, scaled_b(ad, ws).transpose(), true);
  });
}

}  // namespace detail::cpu

namespace detail {

/// \brief Evaluates a forward expression into `y` on the CPU.
template <class Exec, class XD, class WD, class Bias, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::forward_expr<Exec, XD, WD, Bias, T>& e, Dst& y, assign_mode mode) {
  vera::detail::check_forward_aliases("vera::forward", y, e);

  if constexpr (detail::is_bfloat16<XD>) {
    const adapter<float>& ad = e.layer();
    detail::cpu::bfloat16_path::require_low_rank("vera::forward", e.requested_order());
    const typename Eigen::internal::nested_eval<std::decay_t<decltype(e.x())>, 4>::type x(e.x());
    detail::cpu::scratch<T> scratch(e.scratch());
    detail::cpu::bfloat16_path::forward(x, e.w0(), e.bias(), ad, e.context(), y, mode, scratch.get());
  } else {
    const adapter<T>& ad = e.layer();
    // Evaluate an expression-valued X once: it feeds two products.
    const typename Eigen::internal::nested_eval<std::decay_t<decltype(e.x())>, 4>::type x(e.x());
    detail::cpu::scratch<T> scratch(e.scratch());
    workspace<T>& ws = scratch.get();

    forward_context<T>* ctx = e.context();
    const double dropout = ctx != nullptr ? ad.options().dropout : 0.0;
    detail::cpu::plan_request request =
        detail::cpu::request_for(detail::cpu::product_kind::forward, detail::cpu::extents_of(x.rows(), ad), e.requested_order());
    request.keeps_projection = ctx != nullptr;
    request.workspace_reused = scratch.reused();
    request.merged_valid = dropout == 0.0;
    request.row_major_output = std::decay_t<Dst>::IsRowMajor;
    request.gemm_threads = detail::cpu::planning_threads();
    const detail::cpu::plan how = detail::cpu::plan_for(request);

    // P is needed for backward (training) and by the low-rank order.
    using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
    T* p_data = nullptr;
    if (ctx != nullptr) {
      p_data = ctx->begin_step(x.rows(), ad.rank(), dropout).data();
    } else if (how.chosen == order::low_rank) {
      p_data = ws.get(detail::cpu::slot_thin, x.rows(), ad.rank()).data();
    }
    const bool has_p = ctx != nullptr || how.chosen == order::low_rank;
    Eigen::Map<matrix> p(p_data, has_p ? x.rows() : 0, has_p ? ad.rank() : 0);
    if (has_p) {
      const dropout_key* key = ctx != nullptr ? &ctx->mask_key() : nullptr;
      detail::cpu::project_input(x, ad.a(), key, p, ws);
    }

    detail::cpu::adapted_product(x, p, e.w0(), e.bias(), ad, how, y, mode, ws);
    if (ctx != nullptr) ctx->finish_step();
  }
}

}  // namespace detail

}  // namespace vera
