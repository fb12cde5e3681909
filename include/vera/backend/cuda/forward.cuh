// SPDX-License-Identifier: Apache-2.0
// Forward pass on the device: Y = X W0^T + bias + (drop(X) A^T) (Λb B Λd)^T, in the low-rank
// order or, where the cost model says so, as X (W0 + ΔW)^T.
#pragma once

#include "vera/backend/cuda/adapted_weight.cuh"
#include "vera/backend/cuda/gemm.cuh"
#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/launch.cuh"
#include "vera/backend/cuda/validate.cuh"
#include "vera/backend/cuda/workspace_plan.cuh"

namespace vera::cuda {

/// \brief Workspace bytes forward() (keeps_context = false) or forward_train() needs for n rows,
///        in the order forward_order() picks for the same arguments (the merged order holds
///        W0 + ΔW, out x in elements).
template <class T>
std::size_t forward_workspace_bytes(const layer_ref<T>& layer, index n, bool keeps_context,
                                    bool dropout, order requested = order::automatic) {
  detail::carver sizing;
  (void)detail::forward_plan<T>{sizing, layer, n, keeps_context, dropout,
                                detail::forward_order(layer, n, keeps_context, dropout, requested)};
  return sizing.used();
}

namespace detail {

template <class T>
void forward_impl(const stream_context& ctx, const layer_ref<T>& layer, matrix_ref<const T> x,
                  matrix_ref<const T> w0, const T* bias, matrix_ref<T> y,
                  matrix_ref<T>* projected, const dropout_key* mask, workspace_ref ws,
                  order requested, bool accumulate = false) {
  static_assert(detail::is_storage<T>);
  check_layer(layer);
  const index n = x.rows;
  check_matrix("X", x, n, layer.in);
  check_weight(layer, "W0", w0);
  check_matrix("Y", y, n, layer.out);
  if (projected != nullptr) check_matrix("projected (P)", *projected, n, layer.rank);
  const bool dropout = uses_dropout(mask);
  if (dropout && projected == nullptr) {
    throw value_error("vera::cuda::forward: dropout applies only in a training forward (forward_train)");
  }
  const bool keeps = projected != nullptr;
  const order chosen = detail::forward_order(layer, n, keeps, dropout, requested);
  const char* operation = keeps ? "vera::cuda::forward_train" : "vera::cuda::forward";
  carver sizing;
  (void)forward_plan<T>{sizing, layer, n, keeps, dropout, chosen};
  check_workspace(operation, ws, sizing.used());
  const byte_range read[] = {range_of("X", x), range_of("W0", w0),
                             range_of("bias", bias, bias != nullptr ? static_cast<std::size_t>(layer.out) : 0)};
  const byte_range scratch = range_of(ws, sizing.used());
  const byte_range kept = keeps ? range_of("projected (P)", *projected) : byte_range{};
  check_written(operation, layer, range_of("Y", y), {read[0], read[1], read[2], kept, scratch});
  check_written(operation, layer, kept, {read[0], read[1], read[2], scratch});
  check_written(operation, layer, scratch, {read[0], read[1], read[2]});
  if (n == 0) return;

  carver c(ws.data);
  const forward_plan<T> plan(c, layer, n, keeps, dropout, chosen);
  const projection_ref<T>& proj = layer.projection;
  launch_scaled_b(ctx, layer, 1.0f, plan.scaled_b, "vera::cuda::forward scaled_b");

  // The base GEMM adds to Y (accumulating, or on top of the broadcast bias) or overwrites it.
  float beta = accumulate ? 1.0f : 0.0f;
  if (bias != nullptr) {
    launch("vera::cuda::forward bias", detail::kernels::broadcast_rows<T>, detail::kernels::grid_for(n * layer.out), ctx.stream,
           bias, n, layer.out, y.data, y.stride, accumulate);
    beta = 1.0f;
  }

  // Merged order: Y = X (W0 + ΔW)^T, the weight built by one out x rank x in GEMM.
  const bool merged = chosen == order::merged;
  const matrix_ref<const T> weight =
      base_weight(ctx, layer, w0, chosen, static_cast<const T*>(plan.scaled_b), plan.weight);
  gemm_row_major(ctx, false, !layer.fan_in_fan_out, n, layer.out, layer.in, 1.0f, x.data,
                 x.stride, weight.data, weight.stride, beta, y.data, y.stride,
                 merged ? "forward X (W0 + ΔW)^T" : "forward X W0^T");
  if (merged && !keeps) return;

  // P = drop(X) A^T, into the caller's context or the workspace (dropout implies low-rank).
  const T* adapter_input = x.data;
  index adapter_stride = x.stride;
  if (dropout) {
    const float keep_scale = static_cast<float>(1.0 / (1.0 - mask->probability));
    launch("vera::cuda::forward dropout", detail::kernels::dropout_copy<T>, detail::kernels::grid_for(n * layer.in), ctx.stream,
           *mask, keep_scale, x.data, x.stride, n, layer.in, plan.masked_x);
    adapter_input = plan.masked_x;
    adapter_stride = layer.in;
  }
  T* p = keeps ? projected->data : plan.projected;
  const index p_stride = keeps ? projected->stride : layer.rank;
  gemm_row_major(ctx, false, true, n, layer.rank, layer.in, 1.0f, adapter_input, adapter_stride,
                 proj.a, proj.max_in, 0.0f, p, p_stride, "forward P = X A^T");
  if (merged) return;  // the adapter's term is already in the merged weight
  gemm_row_major(ctx, false, true, n, layer.out, layer.rank, 1.0f, static_cast<const T*>(p),
                 p_stride, static_cast<const T*>(plan.scaled_b), layer.rank, 1.0f, y.data,
                 y.stride, "forward Y += P (Λb B Λd)^T");
}

}  // namespace detail

/// \brief Inference: y (n x out) = x W0^T + bias + (x A^T)(Λb B Λd)^T, enqueued on ctx.stream.
///
/// x: n x in; w0: out x in (in x out with fan_in_fan_out); bias: out elements or null;
/// ws: at least forward_workspace_bytes(layer, n, false, false, requested). The order is
/// forward_order(layer, n, false, false, requested): large batches build W0 + ΔW in the
/// workspace and run one GEMM. Throws shape_error / rank_error / value_error before any device
/// work; returns without synchronising.
/// \throws aliasing_error when an output, or the workspace it uses, overlaps what the call reads.
/// \throws cuda_error when a launch or a cuBLAS call fails.
template <class T>
void forward(const stream_context& ctx, const layer_ref<T>& layer, input_ref<T> x,
             input_ref<T> w0, detail::nondeduced<const T*> bias, matrix_ref<T> y, workspace_ref ws,
             order requested = order::automatic) {
  detail::forward_impl<T>(ctx, layer, x, w0, bias, y, nullptr, nullptr, ws, requested);
}

/// \brief Training forward: as forward(), and keeps projected = drop(x) A^T (n x rank) for the
///        backward pass. `mask` (null or p = 0: none) is the CPU's counter-based dropout mask.
///
/// ws: at least forward_workspace_bytes(layer, n, true, dropout on, requested); projected:
/// n x rank. With dropout the low-rank order runs whatever is requested.
/// \throws aliasing_error when an output, or the workspace it uses, overlaps what the call reads.
/// \throws shape_error, rank_error or value_error (extents, strides, null pointers, a workspace
///         too small, a dropout probability outside [0, 1)) before any device work;
///         cuda_error when a launch or a cuBLAS call fails.
template <class T>
void forward_train(const stream_context& ctx, const layer_ref<T>& layer, input_ref<T> x,
                   input_ref<T> w0, detail::nondeduced<const T*> bias, matrix_ref<T> y, matrix_ref<T> projected,
                   workspace_ref ws, const dropout_key* mask = nullptr,
                   order requested = order::automatic) {
  detail::forward_impl<T>(ctx, layer, x, w0, bias, y, &projected, mask, ws, requested);
}

}  // namespace vera::cuda
