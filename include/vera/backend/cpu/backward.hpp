// SPDX-License-Identifier: Apache-2.0
// CPU evaluators of the backward expressions.
#pragma once

#include <Eigen/Core>

#include "vera/backend/cpu/bfloat16.hpp"
#include "vera/backend/cpu/common.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/expr/backward.hpp"

namespace vera {

namespace detail::cpu {

/// dX += G W0 and, in the merged order (as `how` says), G ΔW. In the low-rank order the adapter term is left in
/// `t` (n x rank): t = (or +=, per `t_mode`) T Λd with T = (G Λb) B, for add_back_projection to
/// finish. Sibling groups sum t over siblings and project back once.
template <class G, class W, class T, class Dx, class Thin>
void input_gradient_terms(const G& g, const W& w0, const adapter<T>& ad, const plan& how, Dx& dx,
                          Thin& t, assign_mode t_mode, workspace<T>& ws) {
  with_weight(ad, w0, [&](const auto& w) {
    if (how.chosen == order::merged) {
      auto merged = ws.get(slot_weight, ad.out_features(), ad.in_features());
      fold_into_weight(w, scaled_b(ad, ws), ad.a(), merged);
      gemm(dx, g, merged, true);
      return;
    }
    gemm(dx, g, w, true);
    if (how.thin_side_scales) {
      // T Λd with T = (G Λb) B, the scales on the thin sides; the scaled-B and weight slots
      // are free in this order.
      auto product = ws.get(slot_weight, g.rows(), ad.rank());
      thin_t(g, ad, ws, product);
      if (t_mode == assign_mode::overwrite) {
        t = product * ad.lambda_d().asDiagonal();
      } else {
        t += product * ad.lambda_d().asDiagonal();
      }
      return;
    }
    const auto bbd = scaled_b(ad, ws);
    gemm(t, g, bbd, t_mode == assign_mode::accumulate);
  });
}

}  // namespace detail::cpu

namespace detail {

/// \brief grad_b and grad_d from one GEMM, M = G^T P (out x rank):
///        grad_b[j] = sum_k B[j,k] d[k] M[j,k],  grad_d[k] = sum_j b[j] B[j,k] M[j,k].
///
/// Both follow from Q = P Λd B^T and T = (G Λb) B; the n x out product G ⊙ Q of the textbook
/// form is never built, and the elementwise work is out x rank, independent of n. A single row
/// takes the textbook form instead: Q and T are then vectors, and forming M would cost more.
template <class Exec, class GD, class T, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::parameter_gradient_expr<Exec, GD, T>& e, gradients<T>& out,
              assign_mode mode) {
  if constexpr (detail::is_bfloat16<GD>) {
    const adapter<float>& ad = e.layer();
    if (mode == assign_mode::overwrite) out.set_zero();
    if (!ad.options().train_b && !ad.options().train_d) return;
    const typename Eigen::internal::nested_eval<std::decay_t<decltype(e.upstream())>, 2>::type g(e.upstream());
    detail::cpu::scratch<T> scratch(e.scratch());
    detail::cpu::bfloat16_path::parameter_gradients(g, ad, e.context(), out, scratch.get());
  } else {
    const adapter<T>& ad = e.layer();
    const bool train_b = ad.options().train_b;
    const bool train_d = ad.options().train_d;
    if (mode == assign_mode::overwrite) out.set_zero();
    if (!train_b && !train_d) return;

    detail::cpu::scratch<T> scratch(e.scratch());
    const auto& p = e.context().projected();
    // Evaluate an expression-valued G once: the single-row path reads it twice.
    const typename Eigen::internal::nested_eval<std::decay_t<decltype(e.upstream())>, 2>::type g(e.upstream());
    const auto request = detail::cpu::request_for(detail::cpu::product_kind::parameter_gradients, detail::cpu::extents_of(p.rows(), ad));
    if (detail::cpu::plan_for(request).single_row) {
      // One row: grad_b = colsum(G ⊙ Q) with Q = (P Λd) B^T, grad_d = colsum(T ⊙ P) with
      // T = (G Λb) B. Two matrix-vector products read B twice, cheaper than writing the out x rank
      // outer product M and reading it back. From two rows on, the GEMM that forms M costs less
      // than two products against B (measured with Eigen's GEMM and OpenBLAS).
      workspace<T>& ws = scratch.get();
      if (train_b) {
        auto q = ws.get(detail::cpu::slot_weight, p.rows(), ad.out_features());
        detail::cpu::thin_q(p, ad, ws, q);
        out.lambda_b.noalias() += g.cwiseProduct(q).colwise().sum().transpose();
      }
      if (train_d) {
        auto t = ws.get(detail::cpu::slot_weight, p.rows(), ad.rank());
        detail::cpu::thin_t(g, ad, ws, t);
        out.lambda_d.noalias() += t.cwiseProduct(p).colwise().sum().transpose();
      }
      return;
    }
    auto m_buffer = scratch.get().get(detail::cpu::slot_weight, ad.out_features(), ad.rank());
    // Row-major view of the same memory, so each row of M pairs with a contiguous row of B.
    Eigen::Map<row_matrix<T>> m(m_buffer.data(), ad.out_features(), ad.rank());
    detail::cpu::gemm(m, g.transpose(), p, false);

    detail::cpu::finish_parameter_gradients(m, ad.b(), ad, out);
  }
}

/// \brief grad_X = G W0 + mask ⊙ (G Λb B Λd A) / (1 - p), in the order the cost model picks.
template <class Exec, class GD, class WD, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::input_gradient_expr<Exec, GD, WD, T>& e, Dst& dx, assign_mode mode) {
  vera::detail::check_no_alias("vera::input_gradient", dx, "G", e.upstream());
  vera::detail::check_no_alias("vera::input_gradient", dx, "W0", e.w0());

  if constexpr (detail::is_bfloat16<GD>) {
    const adapter<float>& ad = e.layer();
    detail::cpu::bfloat16_path::require_low_rank("vera::input_gradient", e.requested_order());
    const typename Eigen::internal::nested_eval<std::decay_t<decltype(e.upstream())>, 2>::type g(e.upstream());
    detail::cpu::scratch<T> scratch(e.scratch());
    detail::cpu::bfloat16_path::input_gradient(g, e.w0(), ad, e.context().mask_key(), dx, mode, scratch.get());
  } else {
    const adapter<T>& ad = e.layer();
    const auto& g = e.upstream();
    const dropout_key& key = e.context().mask_key();
    detail::cpu::scratch<T> scratch(e.scratch());
    workspace<T>& ws = scratch.get();
    detail::cpu::plan_request request = detail::cpu::request_for(detail::cpu::product_kind::input_gradient,
                                                 detail::cpu::extents_of(g.rows(), ad), e.requested_order());
    request.workspace_reused = scratch.reused();
    request.merged_valid = key.probability == 0.0;
    const detail::cpu::plan how = detail::cpu::plan_for(request);
    if (mode == assign_mode::overwrite) dx.setZero();
    auto t = ws.get(detail::cpu::slot_thin, how.chosen == order::low_rank ? g.rows() : 0, ad.rank());
    detail::cpu::input_gradient_terms(g, e.w0(), ad, how, dx, t, assign_mode::overwrite, ws);
    if (how.chosen == order::low_rank) detail::cpu::add_back_projection(t, ad.a(), key, dx, ws);
  }
}

}  // namespace detail

}  // namespace vera
