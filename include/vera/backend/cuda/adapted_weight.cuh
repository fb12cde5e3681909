// SPDX-License-Identifier: Apache-2.0
// The pieces forward, backward and merge share: Λb B Λd folded into one small matrix, ΔW added to
// a weight, and the association order each operation runs in.
#pragma once

#include <string>
#include <type_traits>

#include "vera/backend/cuda/error.cuh"
#include "vera/backend/cuda/gemm.cuh"
#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/launch.cuh"
#include "vera/backend/cuda/types.cuh"
#include "vera/backend/cuda/validate.cuh"
#include "vera/expr/cost.hpp"

namespace vera::cuda {

namespace detail {

/// order::automatic for float32 storage; 16-bit storage keeps the low-rank order unless told
/// otherwise: W0 + ΔW rounded to 16 bits would lose most of a small ΔW (bfloat16 keeps 8
/// significant bits, so an update under 1/256 of a weight would vanish), while the low-rank
/// order adds the adapter's term in float32 accumulation.
template <class T>
order storage_default(order requested) {
  if constexpr (!std::is_same_v<T, float>) {
    if (requested == order::automatic) return order::low_rank;
  }
  return requested;
}

/// The extents the order functions read: a layer's positive in, out and rank, and n >= 0 rows.
template <class T>
vera::detail::product_extents order_extents(const char* operation, const layer_ref<T>& layer, index n) {
  vera::detail::check_positive("layer in", layer.in);
  vera::detail::check_positive("layer out", layer.out);
  vera::detail::check_positive("layer rank", layer.rank);
  if (n < 0) {
    throw value_error(std::string(operation) + ": rows must be >= 0, got " + std::to_string(n));
  }
  return {n, layer.in, layer.out, layer.rank};
}

/// \brief The order forward() (keeps_context false) or forward_train() runs for n rows: the
///        CPU's cost model (vera::forward_costs) with a reused workspace, `requested` when not
///        automatic, and always low-rank with dropout (a merged weight cannot apply the mask to
///        the adapter's input alone). With 16-bit storage automatic means low-rank: a merged
///        weight rounded to 16 bits would lose most of a small ΔW.
/// \throws value_error when n is negative or the layer's in, out or rank is not positive.
template <class T>
order forward_order(const layer_ref<T>& layer, index n, bool keeps_context, bool dropout,
                    order requested = order::automatic) {
  const vera::detail::product_extents extents = detail::order_extents("vera::cuda::detail::forward_order", layer, n);
  return vera::detail::choose_order(detail::storage_default<T>(requested),
                      vera::detail::forward_costs(extents, keeps_context, /*workspace_reused=*/true), !dropout);
}

/// \brief The order input_gradient() runs for n rows: low-rank (G Λb B Λd) A, or merged
///        G (W0 + ΔW); chosen as forward_order() does (16-bit storage included), from
///        vera::input_gradient_costs.
/// \throws value_error when n is negative or the layer's in, out or rank is not positive.
template <class T>
order input_gradient_order(const layer_ref<T>& layer, index n, bool dropout,
                           order requested = order::automatic) {
  const vera::detail::product_extents extents = detail::order_extents("vera::cuda::detail::input_gradient_order", layer, n);
  return vera::detail::choose_order(detail::storage_default<T>(requested),
                      vera::detail::input_gradient_costs(extents, /*workspace_reused=*/true), !dropout);
}

/// dst (out x rank, dense) = sign Λb B Λd, enqueued on ctx.stream.
template <class T>
void launch_scaled_b(const stream_context& ctx, const layer_ref<T>& layer, float sign, T* dst,
                     const char* operation) {
  const projection_ref<T>& proj = layer.projection;
  launch(operation, detail::kernels::scaled_b<T>, detail::kernels::grid_for(layer.out * layer.rank), ctx.stream, proj.b,
         proj.rank, layer.lambda_b, layer.lambda_d, layer.out, layer.rank, sign, dst);
}

/// target (stored as W0, row stride `stride`) = keep target + scaled A, with scaled = ± Λb B Λd
/// (out x rank); keep is 1 (add) or 0 (overwrite with ΔW).
template <class T>
void add_delta_gemm(const stream_context& ctx, const layer_ref<T>& layer, const T* scaled, T* target,
                    index stride, float keep = 1.0f) {
  const projection_ref<T>& proj = layer.projection;
  if (layer.fan_in_fan_out) {
    // in x out storage: ΔW^T = A^T (Λb B Λd)^T.
    gemm_row_major(ctx, true, true, layer.in, layer.out, layer.rank, 1.0f, proj.a, proj.max_in,
                   scaled, layer.rank, keep, target, stride, "W0 += A^T (Λb B Λd)^T");
  } else {
    gemm_row_major(ctx, false, false, layer.out, layer.in, layer.rank, 1.0f, scaled, layer.rank,
                   proj.a, proj.max_in, keep, target, stride, "W0 += (Λb B Λd) A");
  }
}

/// weight (W0's storage order, row stride `stride`) = W0 + ΔW, from scaled = Λb B Λd already in
/// the workspace: W0 copied over, then the merge GEMM.
template <class T>
void build_merged_weight(const stream_context& ctx, const layer_ref<T>& layer, matrix_ref<const T> w0,
                         const T* scaled, T* weight, index stride) {
  const index cols = stored_cols(layer);
  check(cudaMemcpy2DAsync(weight, sizeof(T) * stride, w0.data, sizeof(T) * w0.stride, sizeof(T) * cols,
                          stored_rows(layer), cudaMemcpyDeviceToDevice, ctx.stream),
        "merged weight cudaMemcpy2DAsync");
  add_delta_gemm(ctx, layer, scaled, weight, stride);
}

/// The weight the base GEMM reads: W0 itself in the low-rank order; in the merged order
/// W0 + ΔW, built into `merged` (dense, W0's storage order) from scaled = Λb B Λd.
template <class T>
matrix_ref<const T> base_weight(const stream_context& ctx, const layer_ref<T>& layer, matrix_ref<const T> w0,
                                order chosen, const T* scaled, T* merged) {
  if (chosen != order::merged) return w0;
  build_merged_weight(ctx, layer, w0, scaled, merged, stored_cols(layer));
  return {merged, stored_rows(layer), stored_cols(layer), stored_cols(layer)};
}

}  // namespace detail

}  // namespace vera::cuda
