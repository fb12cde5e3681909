// SPDX-License-Identifier: Apache-2.0
// Opt-in CUDA backend: forward, backward and merge of VeRA layers on device memory (nvcc only).
#pragma once

#if !defined(__CUDACC__) && !defined(VERA_CUDA_HOST_EMULATION)
#error "<vera/cuda.hpp> holds CUDA kernels: include it from a .cu file compiled by nvcc"
#endif

#include <algorithm>

#include "vera/config.hpp"

#include "vera/backend/cuda/adapted_weight.cuh"
#include "vera/backend/cuda/backward.cuh"
#include "vera/backend/cuda/error.cuh"
#include "vera/backend/cuda/expressions.cuh"
#include "vera/backend/cuda/forward.cuh"
#include "vera/backend/cuda/memory.cuh"
#include "vera/backend/cuda/merge.cuh"
#include "vera/backend/cuda/optim.cuh"
#include "vera/backend/cuda/plan.cuh"
#include "vera/backend/cuda/projection.cuh"
#include "vera/backend/cuda/types.cuh"

namespace vera::cuda {

/// \brief Workspace bytes that cover every operation of `layer` with n rows, in either order,
///        with or without dropout, and a safe merge: reserve this once up front.
template <class T>
std::size_t workspace_bytes(const layer_ref<T>& layer, index n) {
  std::size_t bytes = std::max(parameter_gradient_workspace_bytes(layer), merge_workspace_bytes(layer, true));
  for (const order o : {order::low_rank, order::merged}) {
    for (const bool dropout : {false, true}) {
      bytes = std::max({bytes, forward_workspace_bytes(layer, n, true, dropout, o),
                        input_gradient_workspace_bytes(layer, n, dropout, o)});
    }
    bytes = std::max(bytes, forward_workspace_bytes(layer, n, false, false, o));
  }
  return bytes;
}

}  // namespace vera::cuda

/// \namespace vera::cuda
/// \brief CUDA backend: forward, backward and merge of VeRA layers on device memory, described by
///        non-owning views (layer_ref, matrix_ref) and run on a caller's stream and cuBLAS handle.
