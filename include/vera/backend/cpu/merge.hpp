// SPDX-License-Identifier: Apache-2.0
// CPU evaluator of ΔW: one out x rank x in GEMM into the destination.
#pragma once

#include <Eigen/Core>

#include "vera/backend/cpu/common.hpp"
#include "vera/expr/merge.hpp"

namespace vera {

/// \brief dst = keep * dst + sign * ΔW, with the two scales folded into the small out x rank side.
template <class Exec, class T, class Dst, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const delta_weight_expr<Exec, T>& e, Dst& dst, T keep, T sign) {
  const adapter<T>& ad = e.layer();
  cpu::scratch<T> scratch(e.scratch());
  auto bbd = cpu::scaled_b(ad, scratch.get());
  if (sign != T(1)) bbd *= sign;
  if (keep == T(0)) dst.setZero();
  if (ad.options().fan_in_fan_out) {
    dst.noalias() += ad.a().transpose() * bbd.transpose();
  } else {
    dst.noalias() += bbd * ad.a();
  }
}

}  // namespace vera
