// SPDX-License-Identifier: Apache-2.0
// The pieces forward, backward and merge share: Λb B Λd folded into one small matrix, ΔW added to
// a weight, and the weight the base GEMM reads in the order the plan chose.
#pragma once

#include <string>
#include <type_traits>

#include "vera/backend/cuda/error.cuh"
#include "vera/backend/cuda/gemm.cuh"
#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/launch.cuh"
#include "vera/backend/cuda/plan.cuh"
#include "vera/backend/cuda/types.cuh"
#include "vera/backend/cuda/validate.cuh"
#include "vera/expr/cost.hpp"

namespace vera::cuda {

namespace detail {

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
