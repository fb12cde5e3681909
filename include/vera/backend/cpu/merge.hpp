// SPDX-License-Identifier: Apache-2.0
// CPU evaluator of ΔW: one out x rank x in GEMM into the destination; its folded factor Λb B Λd.
#pragma once

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/backend/cpu/bfloat16.hpp"
#include "vera/backend/cpu/common.hpp"
#include "vera/expr/merge.hpp"

namespace vera {

namespace detail {

/// \brief dst = keep * dst + sign * ΔW, with the two scales folded into the small out x rank side.
template <class Exec, class T, class Dst, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::delta_weight_expr<Exec, T>& e, Dst& dst, T keep, T sign) {
  const adapter<T>& ad = e.layer();
  detail::cpu::scratch<T> scratch(e.scratch());
  if constexpr (detail::is_bfloat16<Dst>) {
    detail::cpu::bfloat16_path::merge(ad, dst, keep != T(0), sign, scratch.get());
  } else {
    auto bbd = detail::cpu::scaled_b(ad, scratch.get());
    if (sign != T(1)) bbd *= sign;
    const bool accumulate = keep != T(0);
    if (ad.options().fan_in_fan_out) {
      detail::cpu::gemm(dst, ad.a().transpose(), bbd.transpose(), accumulate);
    } else {
      detail::cpu::gemm(dst, bbd, ad.a(), accumulate);
    }
  }
}

}  // namespace detail

/// \brief Λb B Λd (out x rank), the left factor of ΔW = (Λb B Λd) A, computed and rounded
///        exactly as the merge evaluator computes it (e.g. an exact LoRA lora_B).
template <class T>
row_matrix<T> scaled_b(const adapter<T>& ad) {
  workspace<T> scratch;
  return detail::cpu::scaled_b(ad, scratch);
}
template <class T>
row_matrix<T> scaled_b(adapter<T>&&) = delete;

}  // namespace vera
