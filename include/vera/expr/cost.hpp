// SPDX-License-Identifier: Apache-2.0
// Cost model that picks the association order of an adapted product from the shapes.
#pragma once

#include <array>
#include <cstddef>

#include "vera/core/shape.hpp"
#include "vera/core/vocabulary.hpp"

namespace vera {

namespace detail {

/// \brief Extents of one adapted product: rows (tokens), in, out and rank.
struct product_extents {
  index rows = 0;  ///< n: rows of X and Y (tokens)
  index in = 0;  ///< input features
  index out = 0;  ///< output features
  index rank = 0;  ///< adapter rank r
};

/// \brief Estimated cost of both orders, in flop-equivalents.
struct order_costs {
  double low_rank = 0.0;  ///< cost of order::low_rank
  double merged = 0.0;  ///< cost of order::merged
};

/// \brief Flop-equivalents charged per element of an out x in matrix that the merged order
///        builds: a copy of W0 and an accumulate pass when a reused workspace holds it, plus the
///        first touch of fresh pages (about 10 µs per 4 KiB page) when it must be allocated.
struct merge_overheads {
  /// Per element when a workspace already holds the buffer.
  static constexpr double reused_workspace = 4.0;
  /// Per element when the buffer is freshly allocated.
  static constexpr double fresh_allocation = 256.0;
};

inline double merged_build_cost(const product_extents& e, bool workspace_reused) {
  const double per_element =
      workspace_reused ? merge_overheads::reused_workspace : merge_overheads::fresh_allocation;
  const double elements = static_cast<double>(e.out) * static_cast<double>(e.in);
  return 2.0 * elements * static_cast<double>(e.rank) + per_element * elements;
}

/// \brief Forward cost of both orders beyond the shared base GEMM (2 n in out, same in both).
///
/// low-rank: P = X A^T (2 n r in) and P (Λb B Λd)^T (2 n r out).
/// merged:   build W0 + ΔW (2 out r in + overhead); a training forward still needs P (2 n r in).
inline order_costs forward_costs(const product_extents& e, bool keeps_projection,
                                 bool workspace_reused) {
  const double n = static_cast<double>(e.rows);
  const double r = static_cast<double>(e.rank);
  const double p_cost = 2.0 * n * r * static_cast<double>(e.in);
  order_costs costs;
  costs.low_rank = p_cost + 2.0 * n * r * static_cast<double>(e.out);
  costs.merged = detail::merged_build_cost(e, workspace_reused) + (keeps_projection ? p_cost : 0.0);
  return costs;
}

/// \brief Cost of grad_X = G (W0 + ΔW) beyond the shared G W0 GEMM.
///
/// low-rank: T' = G (Λb B Λd) (2 n out r), then T' A (2 n r in). merged: build W0 + ΔW.
inline order_costs input_gradient_costs(const product_extents& e, bool workspace_reused) {
  const double n = static_cast<double>(e.rows);
  const double r = static_cast<double>(e.rank);
  order_costs costs;
  costs.low_rank = 2.0 * n * r * static_cast<double>(e.out) + 2.0 * n * r * static_cast<double>(e.in);
  costs.merged = detail::merged_build_cost(e, workspace_reused);
  return costs;
}

/// \brief The order to run: `requested` unless automatic; merged only where it is valid
///        (dropout on the adapter input makes the two terms see different inputs).
inline order choose_order(order requested, const order_costs& costs, bool merged_valid) {
  if (!merged_valid) return order::low_rank;
  if (requested != order::automatic) return requested;
  return costs.merged < costs.low_rank ? order::merged : order::low_rank;
}

/// \brief Orders for sibling layers that read the same input (same rows, in and rank) and
///        share one thin product, P = X A^T in a forward or (sum_i T_i Λd_i) A for grad_X
///        (2 n r in either way), paid once when any sibling runs low-rank, or anyway when
///        `shared_paid` (a training forward keeps P).
///
/// Beyond its base GEMM, sibling i then costs 2 n r out_i low-rank (P B_i^T, or G_i B_i) or
/// the build of W_i + ΔW_i merged. With the shared product paid each sibling takes its cheaper
/// order; the alternative is every sibling merged, which skips it. For one sibling this is
/// exactly forward_costs / input_gradient_costs. A requested order applies to every sibling.
template <std::size_t N>
std::array<order, N> choose_sibling_orders(order requested, const std::array<product_extents, N>& siblings,
                                           bool shared_paid, bool workspace_reused, bool merged_valid) {
  static_assert(N >= 1, "vera::detail::choose_sibling_orders: a group needs at least one sibling");
  std::array<order, N> chosen{};
  if (!merged_valid || requested != order::automatic) {
    chosen.fill(merged_valid ? requested : order::low_rank);
    return chosen;
  }
  const product_extents& lead = siblings[0];
  const double shared = 2.0 * static_cast<double>(lead.rows) * static_cast<double>(lead.rank) *
                        static_cast<double>(lead.in);
  double mixed = shared_paid ? 0.0 : shared;
  double all_merged = 0.0;
  bool any_low_rank = false;
  for (std::size_t i = 0; i < N; ++i) {
    const product_extents& e = siblings[i];
    const double low_rank = 2.0 * static_cast<double>(e.rows) * static_cast<double>(e.rank) *
                            static_cast<double>(e.out);
    const double merged = detail::merged_build_cost(e, workspace_reused);
    const bool low = low_rank <= merged;
    chosen[i] = low ? order::low_rank : order::merged;
    any_low_rank = any_low_rank || low;
    mixed += low ? low_rank : merged;
    all_merged += merged;
  }
  if (any_low_rank && !shared_paid && all_merged < mixed) chosen.fill(order::merged);
  return chosen;
}

}  // namespace detail

}  // namespace vera
