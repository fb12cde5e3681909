// SPDX-License-Identifier: Apache-2.0
// The CPU backend's plan: every decision that shapes how an adapted product is computed on the
// host, made in one place from the shapes, the destination's layout and the GEMM thread count
// (and, for mixed batches, how the rows fall into runs of one adapter).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <type_traits>

#include "vera/backend/cpu/gemm_threads.hpp"
#include "vera/core/shape.hpp"
#include "vera/expr/cost.hpp"

namespace vera::detail::cpu {

/// Which product a plan is for.
enum class product_kind {
  forward,              ///< Y = X W0ᵀ + bias + adapter term
  parameter_gradients,  ///< grad_b, grad_d
  input_gradient,       ///< grad_X
};

/// What a CPU evaluator knows before it computes: the product, its extents, the caller's
/// requests and the circumstances the cost model weighs.
struct plan_request {
  product_kind kind = product_kind::forward;  ///< which product
  vera::detail::product_extents extents;  ///< rows (n), in, out, rank
  order requested = order::automatic;  ///< the order the expression asked for
  bool keeps_projection = false;  ///< a training forward: P = X Aᵀ is computed whatever the order
  bool workspace_reused = true;  ///< a caller's workspace holds the buffers (no first touch)
  bool merged_valid = true;  ///< false with dropout on the adapter input
  bool row_major_output = false;  ///< the destination is row-major
  int gemm_threads = 1;  ///< threads the GEMM library runs on (see vera::set_gemm_threads)
};

/// A request for `kind` over `extents` asking for `requested`, the rest at its defaults.
inline plan_request request_for(product_kind kind, const vera::detail::product_extents& extents,
                                order requested = order::automatic) {
  plan_request request;
  request.kind = kind;
  request.extents = extents;
  request.requested = requested;
  return request;
}

/// How the evaluator computes it.
struct plan {
  /// The association order (forward and input gradient; low_rank for parameter gradients).
  order chosen = order::low_rank;
  /// The scales Λb, Λd are applied to the thin n x rank and n x out sides instead of being folded
  /// into Λb B Λd (out x rank): small batches, where the fold costs as much as the GEMMs.
  bool thin_side_scales = false;
  /// The low-rank forward is issued transposed, Yᵀ = W0 Xᵀ + Λb B Λd Pᵀ into a scratch added to Y:
  /// 2 to 64 rows, column-major Y, threaded GEMM.
  bool transposed = false;
  /// Parameter gradients of a single row: two matrix-vector products against B instead of the
  /// out x rank GEMM M = Gᵀ P.
  bool single_row = false;
};

/// True when the scales are cheaper on the thin sides, n (rank + out) multiplies, than folded
/// into Λb B Λd, out x rank.
inline bool thin_sides_cheaper(index rows, index out, index rank) {
  return rows * (rank + out) < out * rank;
}

/// True when the forward's low-rank order over `rows` rows is faster issued transposed: a threaded
/// BLAS splits a GEMM between threads along the output's leading side, and with only 2-64 rows
/// there the second thread gained little (OpenBLAS 0.3.21, 2 threads, 768 x 768: X W0ᵀ 0.233 ms
/// against W0 Xᵀ 0.155 ms at 16 rows, 0.440 against 0.368 ms at 64, the other way from 128 rows
/// on). A row-major Y already puts the long side first; on one thread the direct order was as
/// fast or faster.
inline bool transposed_faster(index rows, bool row_major_output, int gemm_threads) {
  return !row_major_output && rows > 1 && rows <= 64 && gemm_threads > 1;
}

/// The thread count the small-batch arrangement is decided by: OpenBLAS's (or the value given to
/// set_gemm_threads) when Eigen's products go to a BLAS; without one, Eigen's own GEMM keeps the
/// direct arrangement unless a count above 1 was set explicitly (transposed was slower there).
inline int planning_threads() {
#if defined(EIGEN_USE_BLAS)
  return gemm_threads();
#else
  return detail::gemm_threads_setting.load(std::memory_order_relaxed);
#endif
}

/// \brief The plan for one adapted product. Pure: the same request gives the same plan, so a test
///        can inspect what the evaluators will do at any shape and thread count.
inline plan plan_for(const plan_request& request) {
  const vera::detail::product_extents& e = request.extents;
  plan p;
  switch (request.kind) {
    case product_kind::forward:
      p.chosen = vera::detail::choose_order(request.requested,
                              vera::detail::forward_costs(e, request.keeps_projection, request.workspace_reused),
                              request.merged_valid);
      break;
    case product_kind::input_gradient:
      p.chosen = vera::detail::choose_order(request.requested,
                              vera::detail::input_gradient_costs(e, request.workspace_reused), request.merged_valid);
      break;
    case product_kind::parameter_gradients:
      p.chosen = order::low_rank;
      p.single_row = e.rows == 1;
      break;
  }
  if (request.kind != product_kind::parameter_gradients && p.chosen == order::low_rank) {
    p.thin_side_scales = thin_sides_cheaper(e.rows, e.out, e.rank);
    p.transposed = request.kind == product_kind::forward &&
                   transposed_faster(e.rows, request.row_major_output, request.gemm_threads);
  }
  return p;
}

/// \brief Plans for sibling layers that read one input (`kind` forward or input_gradient): the
///        orders are chosen jointly (vera::choose_sibling_orders: the shared thin product is paid
///        once), then each sibling gets the rest of its plan as plan_for gives it for that order.
template <std::size_t N>
std::array<plan, N> plan_siblings(product_kind kind, order requested,
                                  const std::array<vera::detail::product_extents, N>& extents, bool shared_paid,
                                  bool workspace_reused, bool merged_valid,
                                  const std::array<bool, N>& row_major_outputs, int gemm_threads) {
  const std::array<order, N> orders =
      vera::detail::choose_sibling_orders(requested, extents, shared_paid, workspace_reused, merged_valid);
  std::array<plan, N> plans{};
  for (std::size_t i = 0; i < N; ++i) {
    plan_request r;
    r.kind = kind;
    r.extents = extents[i];
    r.requested = orders[i];
    r.row_major_output = row_major_outputs[i];
    r.gemm_threads = gemm_threads;
    plans[i] = plan_for(r);
  }
  return plans;
}

/// Mean rows per run from which the mixed-batch passes go run by run, vectorised along the rows
/// of each run, instead of gathering each row's vector elements. Batches that keep each
/// request's tokens together (the usual serving layout) have long runs; shuffled rows have runs
/// of about 1.
inline constexpr index min_mean_run = 8;

/// \brief Whether the elementwise passes of a mixed batch of `rows` rows, in `runs` runs of
///        consecutive rows that share an adapter, go run by run (true) or row by row through
///        gathered vector elements (false). A pass whose operand is row-major goes row by row
///        whatever this says: its rows are then the contiguous side.
inline bool passes_by_runs(index rows, index runs) { return runs * min_mean_run <= rows; }

/// The extents of a product of `rows` rows through adapter `ad`.
template <class Adapter>
vera::detail::product_extents extents_of(index rows, const Adapter& ad) {
  return {rows, ad.in_features(), ad.out_features(), ad.rank()};
}

/// Whether the forward into a destination of type Y over `rows` rows is issued transposed, with
/// the thread count the evaluators plan with.
template <class Y>
bool transposed_small_batch(index rows) {
  return transposed_faster(rows, std::decay_t<Y>::IsRowMajor, planning_threads());
}

}  // namespace vera::detail::cpu
