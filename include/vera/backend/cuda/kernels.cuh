// SPDX-License-Identifier: Apache-2.0
// The backend's elementwise and reduction kernels; every GEMM goes to cuBLAS instead.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "vera/backend/cuda/types.cuh"
#include "vera/core/dropout.hpp"
#include "vera/core/philox.hpp"

namespace vera::cuda::detail::kernels {

// Storage <-> float32 through the storage traits: the backend computes in float and rounds once on
// store.
template <class T>
__device__ __forceinline__ float to_float(T v) {
  return storage<T>::to_float(v);
}
template <class T>
__device__ __forceinline__ T from_float(float v) {
  return storage<T>::from_float(v);
}

/// Threads per block for the elementwise kernels.
inline constexpr int block_threads = 256;

/// Blocks for a grid-stride loop over `count` elements; capped because every kernel strides.
inline unsigned grid_for(std::int64_t count) {
  const std::int64_t blocks = (count + block_threads - 1) / block_threads;
  constexpr std::int64_t cap = std::int64_t{1} << 16;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

__device__ __forceinline__ std::int64_t first_thread() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::int64_t thread_stride() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

/// dst (out x rank, dense) = sign * Λb B Λd: both scales folded into the small matrix so the
/// n-sized GEMMs read them for free. Same association as the CPU: b[o] * (B[o,k] * d[k]).
template <class T>
__global__ void scaled_b(const T* b, std::int64_t b_stride, const float* lambda_b,
                         const float* lambda_d, std::int64_t out, std::int64_t rank, float sign,
                         T* dst) {
  for (std::int64_t i = first_thread(); i < out * rank; i += thread_stride()) {
    const std::int64_t o = i / rank;
    const std::int64_t k = i % rank;
    const float value = lambda_b[o] * (to_float(b[o * b_stride + k]) * lambda_d[k]);
    dst[i] = from_float<T>(sign * value);
  }
}

/// Every row of y (rows x cols) = bias (cols), or += bias with `accumulate`: the GEMMs then
/// accumulate on top.
template <class T>
__global__ void broadcast_rows(const T* bias, std::int64_t rows, std::int64_t cols, T* y,
                               std::int64_t y_stride, bool accumulate) {
  for (std::int64_t i = first_thread(); i < rows * cols; i += thread_stride()) {
    const std::int64_t r = i / cols;
    const std::int64_t c = i % cols;
    T& out = y[r * y_stride + c];
    out = accumulate ? from_float<T>(to_float(out) + to_float(bias[c])) : bias[c];
  }
}

/// dst (rows x cols, dense) = drop(x) with the CPU's mask and keep scale 1 / (1 - p).
template <class T>
__global__ void dropout_copy(dropout_key key, float keep_scale, const T* x, std::int64_t x_stride,
                             std::int64_t rows, std::int64_t cols, T* dst) {
  for (std::int64_t i = first_thread(); i < rows * cols; i += thread_stride()) {
    const std::int64_t r = i / cols;
    const std::int64_t c = i % cols;
    dst[i] = dropout_keeps(key, r, c) ? from_float<T>(to_float(x[r * x_stride + c]) * keep_scale)
                                      : from_float<T>(0.0f);
  }
}

/// dx += drop(tile): the adapter's share of grad_X goes through the forward's mask.
template <class T>
__global__ void masked_add(dropout_key key, float keep_scale, const T* tile, std::int64_t rows,
                           std::int64_t cols, T* dx, std::int64_t dx_stride) {
  for (std::int64_t i = first_thread(); i < rows * cols; i += thread_stride()) {
    const std::int64_t r = i / cols;
    const std::int64_t c = i % cols;
    if (!dropout_keeps(key, r, c)) continue;
    T& target = dx[r * dx_stride + c];
    target = from_float<T>(to_float(target) + to_float(tile[i]) * keep_scale);
  }
}

/// Rows of M each block reduces in parameter_partials.
inline constexpr std::int64_t gradient_rows_per_block = 32;

/// With M = G^T P (out x rank, float, dense): grad_b[o] = sum_k (M[o,k] B[o,k]) d[k] for the
/// block's rows, and partials[block][k] = sum_{o in block} b[o] (M[o,k] B[o,k]).
///
/// Deterministic: each sum runs in a fixed order (a fixed-shape shared-memory tree over a fixed
/// thread count for grad_b, a sequential loop for the partials); no float atomics anywhere.
/// A null grad_b or partials skips that half.
template <class T>
__global__ void __launch_bounds__(block_threads)
    parameter_partials(const float* m, const T* b, std::int64_t b_stride, const float* lambda_b,
                       const float* lambda_d, std::int64_t out, std::int64_t rank,
                       float* grad_b, bool accumulate, float* partials) {
  __shared__ float shared[block_threads];
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * gradient_rows_per_block;
  const std::int64_t last =
      first + gradient_rows_per_block < out ? first + gradient_rows_per_block : out;
  if (grad_b != nullptr) {
    for (std::int64_t o = first; o < last; ++o) {
      float local = 0.0f;
      for (std::int64_t k = tid; k < rank; k += block_threads) {
        local += (m[o * rank + k] * to_float(b[o * b_stride + k])) * lambda_d[k];
      }
      shared[tid] = local;
      __syncthreads();
      for (int half = block_threads / 2; half > 0; half /= 2) {
        if (tid < half) shared[tid] += shared[tid + half];
        __syncthreads();
      }
      if (tid == 0) grad_b[o] = (accumulate ? grad_b[o] : 0.0f) + shared[0];
      __syncthreads();
    }
  }
  if (partials != nullptr) {
    for (std::int64_t k = tid; k < rank; k += block_threads) {
      float sum = 0.0f;
      for (std::int64_t o = first; o < last; ++o) {
        sum += lambda_b[o] * (m[o * rank + k] * to_float(b[o * b_stride + k]));
      }
      partials[static_cast<std::int64_t>(blockIdx.x) * rank + k] = sum;
    }
  }
}

/// grad_d[k] (+)= sum over chunks of partials[chunk][k], chunks in order: the fixed finishing
/// pass of the reduction above.
template <class Unused = void>
__global__ void finish_columns(const float* partials, std::int64_t chunks, std::int64_t rank,
                               float* grad_d, bool accumulate) {
  for (std::int64_t k = first_thread(); k < rank; k += thread_stride()) {
    float sum = 0.0f;
    for (std::int64_t c = 0; c < chunks; ++c) sum += partials[c * rank + k];
    grad_d[k] = (accumulate ? grad_d[k] : 0.0f) + sum;
  }
}

/// *flag = 1 when any element is NaN or infinite. Every writer stores the same value, so the
/// race between them cannot change the result; the caller zeroes the flag first.
template <class T>
__global__ void flag_non_finite(const T* data, std::int64_t rows, std::int64_t cols,
                                std::int64_t stride, int* flag) {
  for (std::int64_t i = first_thread(); i < rows * cols; i += thread_stride()) {
    const float v = to_float(data[(i / cols) * stride + i % cols]);
    if (!isfinite(v)) *flag = 1;
  }
}

/// w = candidate unless the flag is set: safe merge decides on the device, so the host never
/// has to wait for the check before the weight is either committed or left alone.
template <class T>
__global__ void commit_unless_flagged(const int* flag, const T* candidate, std::int64_t rows,
                                      std::int64_t cols, T* w, std::int64_t stride) {
  if (*flag != 0) return;
  for (std::int64_t i = first_thread(); i < rows * cols; i += thread_stride()) {
    w[(i / cols) * stride + i % cols] = candidate[i];
  }
}

/// Fills a rows x cols projection matrix from the counter-based generator: the same function
/// the CPU fill calls, so float32 results are bit-identical; other storage rounds that float.
template <class T>
__global__ void philox_fill(std::uint64_t seed, std::uint32_t which, std::int64_t rows,
                            std::int64_t cols, float bound, T* out, std::int64_t stride) {
  for (std::int64_t i = first_thread(); i < rows * cols; i += thread_stride()) {
    const std::int64_t r = i / cols;
    const std::int64_t c = i % cols;
    out[r * stride + c] = from_float<T>(vera::detail::philox_projection_element(seed, which, r, c, bound));
  }
}

}  // namespace vera::cuda::detail::kernels
