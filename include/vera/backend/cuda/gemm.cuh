// SPDX-License-Identifier: Apache-2.0
// Row-major GEMM on cuBLAS (column-major) with float32 accumulation for every storage type.
#pragma once

#include <type_traits>

#include <cublas_v2.h>

#include "vera/backend/cuda/error.cuh"
#include "vera/backend/cuda/types.cuh"

namespace vera::cuda::detail {

/// C (m x n, row-major, stride ldc) = alpha * op(A) op(B) + beta * C, with op(A) m x k and
/// op(B) k x n read from row-major buffers (strides lda, ldb).
///
/// A row-major matrix is its transpose in column-major, so cuBLAS computes C^T = op(B)^T op(A)^T
/// with the operands swapped and each transpose flag kept. Inputs share type In; C may be float
/// (M = G^T P keeps full precision for the reduction) or In. Extents were checked to fit int.
template <class In, class Out>
void gemm_row_major(const stream_context& ctx, bool trans_a, bool trans_b, index m, index n,
                    index k, float alpha, const In* a, index lda, const In* b, index ldb,
                    float beta, Out* c, index ldc, const char* what) {
  const cublasComputeType_t compute = std::is_same_v<In, float> && ctx.allow_tf32
                                          ? CUBLAS_COMPUTE_32F_FAST_TF32
                                          : CUBLAS_COMPUTE_32F;
  check(cublasGemmEx(ctx.cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                     trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                     static_cast<int>(k), &alpha, b, storage<In>::type, static_cast<int>(ldb), a,
                     storage<In>::type, static_cast<int>(lda), &beta, c, storage<Out>::type,
                     static_cast<int>(ldc), compute, CUBLAS_GEMM_DEFAULT),
        what);
}

}  // namespace vera::cuda::detail
