// SPDX-License-Identifier: Apache-2.0
// CPU evaluators of the backward expressions.
#pragma once

#include <Eigen/Core>

#include "vera/backend/cpu/common.hpp"
#include "vera/expr/backward.hpp"

namespace vera {

/// \brief grad_b and grad_d from one GEMM, M = G^T P (out x rank):
///        grad_b[j] = sum_k B[j,k] d[k] M[j,k],  grad_d[k] = sum_j b[j] B[j,k] M[j,k].
///
/// Both follow from Q = P Λd B^T and T = (G Λb) B; the n x out product G ⊙ Q of the textbook
/// form is never built, and the elementwise work is out x rank, independent of n.
template <class Exec, class GD, class T, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const parameter_gradient_expr<Exec, GD, T>& e, gradients<T>& out,
              assign_mode mode) {
  const adapter<T>& ad = e.layer();
  const bool train_b = ad.options().train_b;
  const bool train_d = ad.options().train_d;
  if (mode == assign_mode::overwrite) out.set_zero();
  if (!train_b && !train_d) return;

  cpu::scratch<T> scratch(e.scratch());
  auto m_buffer = scratch.get().get(cpu::slot_weight, ad.out_features(), ad.rank());
  // Row-major view of the same memory, so each row of M pairs with a contiguous row of B.
  Eigen::Map<row_matrix<T>> m(m_buffer.data(), ad.out_features(), ad.rank());
  m.noalias() = e.upstream().transpose() * e.context().projected();

  const auto b_full = ad.b();
  const auto lambda_b = ad.lambda_b();
  const auto lambda_d = ad.lambda_d();
  for (index j = 0; j < ad.out_features(); ++j) {
    const auto weighted = m.row(j).cwiseProduct(b_full.row(j));
    if (train_b) out.lambda_b(j) += weighted.dot(lambda_d.transpose());
    if (train_d) out.lambda_d.noalias() += lambda_b(j) * weighted.transpose();
  }
}

/// \brief grad_X = G W0 + mask ⊙ (G Λb B Λd A) / (1 - p), in the order the cost model picks.
template <class Exec, class GD, class WD, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const input_gradient_expr<Exec, GD, WD, T>& e, Dst& dx, assign_mode mode) {
  check_no_alias("vera::input_gradient", dx, "G", e.upstream());
  check_no_alias("vera::input_gradient", dx, "W0", e.w0());

  const adapter<T>& ad = e.layer();
  const auto& g = e.upstream();
  const dropout_key& key = e.context().mask_key();
  cpu::scratch<T> scratch(e.scratch());
  workspace<T>& ws = scratch.get();
  const product_extents extents{g.rows(), ad.in_features(), ad.out_features(), ad.rank()};
  const order chosen = choose_order(e.requested_order(),
                                    input_gradient_costs(extents, scratch.reused()),
                                    key.probability == 0.0);
  if (mode == assign_mode::overwrite) dx.setZero();
  cpu::with_weight(ad, e.w0(), [&](const auto& w) {
    if (chosen == order::merged) {
      const auto bbd = cpu::scaled_b(ad, ws);
      auto merged = ws.get(cpu::slot_weight, ad.out_features(), ad.in_features());
      merged = w;
      merged.noalias() += bbd * ad.a();
      dx.noalias() += g * merged;
      return;
    }
    dx.noalias() += g * w;
    auto t = ws.get(cpu::slot_thin, g.rows(), ad.rank());
    if (cpu::scale_thin_sides(g.rows(), ad)) {
      // T Λd with T = (G Λb) B, scales on the thin sides (the weight slot is free here).
      auto gb = ws.get(cpu::slot_weight, g.rows(), ad.out_features());
      gb = g * ad.lambda_b().asDiagonal();
      t.noalias() = gb * ad.b();
      t = t * ad.lambda_d().asDiagonal();
    } else {
      t.noalias() = g * cpu::scaled_b(ad, ws);  // T Λd, with T = (G Λb) B
    }
    if (key.probability == 0.0) {
      dx.noalias() += t * ad.a();
      return;
    }
    for (index first = 0; first < g.rows(); first += cpu::dropout_tile_rows) {
      const index rows = std::min(cpu::dropout_tile_rows, g.rows() - first);
      auto tile = ws.get(cpu::slot_tile, rows, ad.in_features());
      tile.noalias() = t.middleRows(first, rows) * ad.a();
      cpu::mask_tile(first, key, tile);
      dx.middleRows(first, rows) += tile;
    }
  });
}

}  // namespace vera
