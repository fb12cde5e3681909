// SPDX-License-Identifier: Apache-2.0
// CPU evaluator of the adapter term: the forward's low-rank branch without W0.
#pragma once

#include <Eigen/Core>

#include "vera/backend/cpu/common.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/expr/adapter_term.hpp"

namespace vera {

namespace detail {

/// \brief Evaluates an adapter term into `z` on the CPU: P = X A^T, then P (Λb B Λd)^T, or
///        ((P Λd) B^T) Λb where the plan keeps the scales on the thin sides.
template <class Exec, class XD, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::adapter_term_expr<Exec, XD, T>& e, Dst& z, assign_mode mode) {
  vera::detail::check_no_alias("vera::adapter_term", z, "X", e.x());
  const adapter<T>& ad = e.layer();
  const typename Eigen::internal::nested_eval<std::decay_t<decltype(e.x())>, 4>::type x(e.x());
  detail::cpu::scratch<T> scratch(e.scratch());
  workspace<T>& ws = scratch.get();

  const detail::cpu::plan how = detail::cpu::plan_for(detail::cpu::request_for(
      detail::cpu::product_kind::forward, detail::cpu::extents_of(x.rows(), ad), order::low_rank));
  auto p = ws.get(detail::cpu::slot_thin, x.rows(), ad.rank());
  detail::cpu::gemm(p, x, ad.a().transpose(), false);
  const bool accumulate = mode == assign_mode::accumulate;
  if (how.thin_side_scales) {
    auto q = ws.get(detail::cpu::slot_weight, x.rows(), ad.out_features());
    detail::cpu::thin_q(p, ad, ws, q);
    if (accumulate) {
      z += q * ad.lambda_b().asDiagonal();
    } else {
      z = q * ad.lambda_b().asDiagonal();
    }
  } else {
    detail::cpu::gemm(z, p, detail::cpu::scaled_b(ad, ws).transpose(), accumulate);
  }
}

}  // namespace detail

}  // namespace vera
