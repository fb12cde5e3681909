// SPDX-License-Identifier: Apache-2.0
// Merge, unmerge and safe merge on the device: W0 ± (Λb B Λd) A as one out x rank x in GEMM.
#pragma once

#include "vera/backend/cuda/adapted_weight.cuh"
#include "vera/backend/cuda/gemm.cuh"
#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/launch.cuh"
#include "vera/backend/cuda/validate.cuh"
#include "vera/backend/cuda/workspace_plan.cuh"

namespace vera::cuda {

/// \brief Workspace bytes merge()/unmerge() (safe = false) or safe_merge() (safe = true) needs.
template <class T>
std::size_t merge_workspace_bytes(const layer_ref<T>& layer, bool safe) {
  detail::carver sizing;
  (void)detail::merge_plan<T>{sizing, layer, safe};
  return sizing.used();
}

namespace detail {

// target (+)= sign * ΔW in the weight's storage order; ΔW = (sign Λb B Λd) A, sign folded into
// the small out x rank factor.
template <class T>
void add_delta(const stream_context& ctx, const layer_ref<T>& layer, const merge_plan<T>& plan,
               float sign, T* target, index stride, float keep = 1.0f) {
  launch_scaled_b(ctx, layer, sign, plan.scaled_b, "vera::cuda::merge scaled_b");
  add_delta_gemm(ctx, layer, static_cast<const T*>(plan.scaled_b), target, stride, keep);
}

/// target = keep target + sign ΔW: merge (1, 1), unmerge (1, -1), ΔW alone (0, 1). With
/// `source` (a matrix of W0's shape, only read), target = source + ΔW instead: the merged copy.
/// `name` names the target in messages.
template <class T>
void merge_signed(const stream_context& ctx, const layer_ref<T>& layer, matrix_ref<T> target,
                  workspace_ref ws, float keep, float sign, const char* operation,
                  const char* name = "W0", const matrix_ref<const T>* source = nullptr) {
  static_assert(detail::is_storage<T>);
  check_layer(layer);
  if (source != nullptr) check_weight(layer, "W0", *source);
  check_weight(layer, name, target);
  const std::size_t needed = merge_workspace_bytes(layer, false);
  check_workspace(operation, ws, needed);
  const byte_range read = source != nullptr ? range_of("W0", *source) : byte_range{};
  const byte_range scratch = range_of(ws, needed);
  check_written(operation, layer, range_of(name, target), {read, scratch});
  check_written(operation, layer, scratch, {read});
  carver c(ws.data);
  const merge_plan<T> plan(c, layer, false);
  if (source == nullptr) {
    add_delta(ctx, layer, plan, sign, target.data, target.stride, keep);
    return;
  }
  launch_scaled_b(ctx, layer, sign, plan.scaled_b, "vera::cuda::merge scaled_b");
  build_merged_weight(ctx, layer, *source, static_cast<const T*>(plan.scaled_b), target.data, target.stride);
}

}  // namespace detail

/// \brief w0 += ΔW = (Λb B Λd) A in place (w0: out x in, or in x out with fan_in_fan_out),
///        enqueued on ctx.stream; ws: at least merge_workspace_bytes(layer, false).
///
/// The rounding to T happens once per element, after float32 accumulation. Tracking whether a
/// layer is merged is the caller's job (as in the CPU's vera::linear).
/// \throws aliasing_error when an output, or the workspace it uses, overlaps what the call reads.
/// \throws shape_error, rank_error or value_error (extents, strides, null pointers, a workspace
///         too small) before any device work; cuda_error when a launch or a cuBLAS call
///         fails.
template <class T>
void merge(const stream_context& ctx, const layer_ref<T>& layer, matrix_ref<T> w0,
           workspace_ref ws) {
  detail::merge_signed(ctx, layer, w0, ws, 1.0f, 1.0f, "vera::cuda::merge");
}

/// \brief w0 -= ΔW, the inverse of merge() up to rounding; same contract.
template <class T>
void unmerge(const stream_context& ctx, const layer_ref<T>& layer, matrix_ref<T> w0,
             workspace_ref ws) {
  detail::merge_signed(ctx, layer, w0, ws, 1.0f, -1.0f, "vera::cuda::unmerge");
}

/// \brief Builds w0 + ΔW in the workspace, checks it for NaN/Inf on the device and commits it to
///        w0 only when every element is finite, all without a host synchronisation.
///
/// `rejected` is one device int that the call zeroes and sets to 1 when the candidate is not
/// finite (w0 is then left unchanged). Its value is known only once the stream reaches this
/// point: the caller synchronises (or records an event) before reading it, and must not treat
/// the layer as merged until then. ws: at least merge_workspace_bytes(layer, true).
/// \throws aliasing_error when an output, or the workspace it uses, overlaps what the call reads.
/// \throws shape_error, rank_error or value_error (extents, strides, null pointers, a workspace
///         too small, a null `rejected`) before any device work; cuda_error when a launch or
///         a cuBLAS call fails.
template <class T>
void safe_merge(const stream_context& ctx, const layer_ref<T>& layer, matrix_ref<T> w0,
                workspace_ref ws, int* rejected) {
  static_assert(detail::is_storage<T>);
  detail::check_layer(layer);
  detail::check_weight(layer, "W0", w0);
  detail::check_pointer("rejected flag", rejected);
  const char* operation = "vera::cuda::safe_merge";
  const std::size_t needed = merge_workspace_bytes(layer, true);
  detail::check_workspace(operation, ws, needed);
  {
    const detail::byte_range scratch = detail::range_of(ws, needed);
    const detail::byte_range flag = detail::range_of("rejected flag", rejected, 1);
    detail::check_written(operation, layer, detail::range_of("W0", w0), {scratch, flag});
    detail::check_written(operation, layer, scratch, {flag});
    detail::check_written(operation, layer, flag, {});
  }
  detail::carver c(ws.data);
  const detail::merge_plan<T> plan(c, layer, true);
  check(cudaMemsetAsync(rejected, 0, sizeof(int), ctx.stream), "vera::cuda::safe_merge cudaMemsetAsync");
  detail::launch_scaled_b(ctx, layer, 1.0f, plan.scaled_b, "vera::cuda::safe_merge scaled_b");
  detail::build_merged_weight(ctx, layer, matrix_ref<const T>(w0), static_cast<const T*>(plan.scaled_b),
                              plan.candidate, w0.cols);
  const unsigned grid = detail::kernels::grid_for(w0.rows * w0.cols);
  detail::launch("vera::cuda::safe_merge check", detail::kernels::flag_non_finite<T>, grid, ctx.stream, plan.candidate,
                 w0.rows, w0.cols, w0.cols, rejected);
  detail::launch("vera::cuda::safe_merge commit", detail::kernels::commit_unless_flagged<T>, grid, ctx.stream, rejected,
                 plan.candidate, w0.rows, w0.cols, w0.data, w0.stride);
}

/// \brief safe_merge() that waits for its own result: synchronises ctx.stream explicitly and
///        throws value_error (w0 unchanged) when the merged weight would not be finite.
///
/// `rejected` is a device int as for safe_merge(). Use it where a blocking call is acceptable,
/// e.g. when exporting a merged model.
/// \throws value_error as described; otherwise as safe_merge().
template <class T>
void safe_merge_sync(const stream_context& ctx, const layer_ref<T>& layer, matrix_ref<T> w0,
                     workspace_ref ws, int* rejected) {
  safe_merge(ctx, layer, w0, ws, rejected);
  int host_flag = 0;
  check(cudaMemcpyAsync(&host_flag, rejected, sizeof(int), cudaMemcpyDeviceToHost, ctx.stream),
        "vera::cuda::safe_merge_sync cudaMemcpyAsync");
  check(cudaStreamSynchronize(ctx.stream), "vera::cuda::safe_merge_sync cudaStreamSynchronize");
  if (host_flag != 0) {
    throw value_error("vera::cuda::safe_merge_sync: the merged weight has non-finite values; W0 left unchanged");
  }
}

}  // namespace vera::cuda
