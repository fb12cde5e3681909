// SPDX-License-Identifier: Apache-2.0
// Backward pass on the device: grad_b and grad_d from one GEMM plus a fixed-order reduction,
// and grad_X = G W0 + drop((G Λb B Λd) A), or G (W0 + ΔW) where the cost model says so.
#pragma once

#include "vera/backend/cuda/adapted_weight.cuh"
#include "vera/backend/cuda/gemm.cuh"
#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/launch.cuh"
#include "vera/backend/cuda/validate.cuh"
#include "vera/backend/cuda/workspace_plan.cuh"

namespace vera::cuda {

/// \brief Workspace bytes parameter_gradients() needs (independent of n).
template <class T>
std::size_t parameter_gradient_workspace_bytes(const layer_ref<T>& layer) {
  detail::carver sizing;
  (void)detail::parameter_gradient_plan<T>{sizing, layer};
  return sizing.used();
}

/// \brief Workspace bytes input_gradient() needs for n rows, in the order
///        input_gradient_order() picks for the same arguments.
template <class T>
std::size_t input_gradient_workspace_bytes(const layer_ref<T>& layer, index n, bool dropout,
                                           order requested = order::automatic) {
  detail::carver sizing;
  (void)detail::input_gradient_plan<T>{sizing, layer, n, dropout,
                                       detail::input_gradient_order(layer, n, dropout, requested)};
  return sizing.used();
}

/// \brief grad_b (out floats) and grad_d (rank floats) from upstream g = dL/dY (n x out) and the
///        forward's projected (n x rank), enqueued on ctx.stream.
///
/// M = g^T projected (out x rank, float32) is one GEMM; then grad_b[o] = sum_k M[o,k] B[o,k] d[k]
/// and grad_d[k] = sum_o M[o,k] b[o] B[o,k] in one deterministic reduction (fixed order, no
/// float atomics): the same bits on every run. A null grad_b or grad_d is not computed (a frozen
/// vector). accumulate adds to the outputs instead of overwriting them.
/// ws: at least parameter_gradient_workspace_bytes(layer).
/// \throws aliasing_error when an output, or the workspace it uses, overlaps what the call reads.
/// \throws shape_error, rank_error or value_error (extents, strides, null pointers, a workspace
///         too small) before any device work; cuda_error when a launch or a cuBLAS call
///         fails.
template <class T>
void parameter_gradients(const stream_context& ctx, const layer_ref<T>& layer,
                         input_ref<T> g, input_ref<T> projected, float* grad_b,
                         float* grad_d, workspace_ref ws, bool accumulate = false) {
  static_assert(detail::is_storage<T>);
  detail::check_layer(layer);
  const index n = g.rows;
  detail::check_matrix("G (upstream gradient)", g, n, layer.out);
  detail::check_matrix("projected (P)", projected, n, layer.rank);
  const char* operation = "vera::cuda::parameter_gradients";
  detail::carver sizing;
  (void)detail::parameter_gradient_plan<T>{sizing, layer};
  detail::check_workspace(operation, ws, sizing.used());
  {
    using detail::range_of;
    const detail::byte_range g_range = range_of("G (upstream gradient)", g);
    const detail::byte_range p_range = range_of("projected (P)", projected);
    const detail::byte_range scratch = range_of(ws, sizing.used());
    const detail::byte_range b_out = range_of("grad_b", grad_b, static_cast<std::size_t>(layer.out));
    const detail::byte_range d_out = range_of("grad_d", grad_d, static_cast<std::size_t>(layer.rank));
    detail::check_written(operation, layer, b_out, {d_out, g_range, p_range, scratch});
    detail::check_written(operation, layer, d_out, {g_range, p_range, scratch});
    detail::check_written(operation, layer, scratch, {g_range, p_range});
  }
  if (grad_b == nullptr && grad_d == nullptr) return;

  detail::carver c(ws.data);
  const detail::parameter_gradient_plan<T> plan(c, layer);
  if (n == 0) {
    // No rows: M is zero; cuBLAS is not asked for an empty inner dimension.
    check(cudaMemsetAsync(plan.m, 0, sizeof(float) * layer.out * layer.rank, ctx.stream),
                  "vera::cuda::parameter_gradients cudaMemsetAsync");
  } else {
    detail::gemm_row_major(ctx, true, false, layer.out, layer.rank, n, 1.0f, g.data, g.stride,
                           projected.data, projected.stride, 0.0f, plan.m, layer.rank,
                           "parameter_gradients M = G^T P");
  }
  const projection_ref<T>& proj = layer.projection;
  detail::launch("vera::cuda::parameter_gradients partials", detail::kernels::parameter_partials<T>,
                 static_cast<unsigned>(plan.chunks), ctx.stream, plan.m, proj.b, proj.rank, layer.lambda_b,
                 layer.lambda_d, layer.out, layer.rank, grad_b, accumulate,
                 grad_d != nullptr ? plan.partials : nullptr);
  if (grad_d != nullptr) {
    detail::launch("vera::cuda::parameter_gradients finish", detail::kernels::finish_columns<>,
                   detail::kernels::grid_for(layer.rank), ctx.stream, plan.partials, plan.chunks, layer.rank, grad_d,
                   accumulate);
  }
}

/// \brief grad_x (n x in) = g W0 + drop((g Λb B Λd) A), enqueued on ctx.stream.
///
/// g: n x out; w0: out x in (in x out with fan_in_fan_out); mask: the forward's dropout key
/// (null or p = 0: none); ws: at least input_gradient_workspace_bytes(layer, n, dropout on,
/// requested). accumulate adds to grad_x instead of overwriting it. The order is
/// input_gradient_order(layer, n, dropout on, requested): without dropout, large batches run
/// g (W0 + ΔW) with the weight built in the workspace.
/// \throws aliasing_error when an output, or the workspace it uses, overlaps what the call reads.
/// \throws shape_error, rank_error or value_error (extents, strides, null pointers, a workspace
///         too small, a dropout probability outside [0, 1)) before any device work;
///         cuda_error when a launch or a cuBLAS call fails.
template <class T>
void input_gradient(const stream_context& ctx, const layer_ref<T>& layer, input_ref<T> g,
                    input_ref<T> w0, matrix_ref<T> grad_x, workspace_ref ws,
                    const dropout_key* mask = nullptr, bool accumulate = false,
                    order requested = order::automatic) {
  static_assert(detail::is_storage<T>);
  detail::check_layer(layer);
  const index n = g.rows;
  detail::check_matrix("G (upstream gradient)", g, n, layer.out);
  detail::check_weight(layer, "W0", w0);
  detail::check_matrix("grad_X", grad_x, n, layer.in);
  const bool dropout = detail::uses_dropout(mask);
  const order chosen = detail::input_gradient_order(layer, n, dropout, requested);
  const char* operation = "vera::cuda::input_gradient";
  detail::carver sizing;
  (void)detail::input_gradient_plan<T>{sizing, layer, n, dropout, chosen};
  detail::check_workspace(operation, ws, sizing.used());
  {
    using detail::range_of;
    const detail::byte_range g_range = range_of("G (upstream gradient)", g);
    const detail::byte_range w_range = range_of("W0", w0);
    const detail::byte_range scratch = range_of(ws, sizing.used());
    detail::check_written(operation, layer, range_of("grad_X", grad_x), {g_range, w_range, scratch});
    detail::check_written(operation, layer, scratch, {g_range, w_range});
  }
  if (n == 0) return;

  detail::carver c(ws.data);
  const detail::input_gradient_plan<T> plan(c, layer, n, dropout, chosen);
  const projection_ref<T>& proj = layer.projection;
  detail::launch_scaled_b(ctx, layer, 1.0f, plan.scaled_b, "vera::cuda::input_gradient scaled_b");
  const float beta = accumulate ? 1.0f : 0.0f;
  // Merged order: grad_X = G (W0 + ΔW), the weight built by one out x rank x in GEMM.
  const bool merged = chosen == order::merged;
  const matrix_ref<const T> weight =
      detail::base_weight(ctx, layer, w0, chosen, static_cast<const T*>(plan.scaled_b), plan.weight);
  detail::gemm_row_major(ctx, false, layer.fan_in_fan_out, n, layer.in, layer.out, 1.0f, g.data,
                         g.stride, weight.data, weight.stride, beta, grad_x.data, grad_x.stride,
                         merged ? "input_gradient G (W0 + ΔW)" : "input_gradient G W0");
  if (merged) return;
  detail::gemm_row_major(ctx, false, false, n, layer.rank, layer.out, 1.0f, g.data, g.stride,
                         static_cast<const T*>(plan.scaled_b), layer.rank, 0.0f, plan.thin,
                         layer.rank, "input_gradient G Λb B Λd");
  if (!dropout) {
    detail::gemm_row_major(ctx, false, false, n, layer.in, layer.rank, 1.0f,
                           static_cast<const T*>(plan.thin), layer.rank, proj.a, proj.max_in, 1.0f,
                           grad_x.data, grad_x.stride, "input_gradient += (G Λb B Λd) A");
    return;
  }
  detail::gemm_row_major(ctx, false, false, n, layer.in, layer.rank, 1.0f,
                         static_cast<const T*>(plan.thin), layer.rank, proj.a, proj.max_in, 0.0f,
                         plan.tile, layer.in, "input_gradient (G Λb B Λd) A");
  const float keep_scale = static_cast<float>(1.0 / (1.0 - mask->probability));
  detail::launch("vera::cuda::input_gradient dropout", detail::kernels::masked_add<T>, detail::kernels::grid_for(n * layer.in),
                 ctx.stream, *mask, keep_scale, plan.tile, n, layer.in, grad_x.data, grad_x.stride);
}

}  // namespace vera::cuda
