// SPDX-License-Identifier: Apache-2.0
// The one place the backend launches its kernels.
#pragma once

#include <utility>

#include "vera/backend/cuda/error.cuh"
#include "vera/backend/cuda/kernels.cuh"

namespace vera::cuda::detail {

/// Enqueues kernel<<<grid, detail::kernels::block_threads, 0, stream>>>(args...) and throws cuda_error
/// naming `what` when the launch fails. Under VERA_CUDA_HOST_EMULATION (the test suite's CPU
/// emulation of the backend, tests/cuda/emulation) the grid runs on host threads instead, one
/// block after another, so that the orchestration can be tested without a GPU.
template <class... Params, class... Args>
void launch(const char* what, void (*kernel)(Params...), unsigned grid, cudaStream_t stream, Args&&... args) {
#if defined(VERA_CUDA_HOST_EMULATION)
  (void)stream;
  vera_emulation::run_grid(grid, detail::kernels::block_threads, [&] { kernel(args...); });
#else
  kernel<<<grid, detail::kernels::block_threads, 0, stream>>>(std::forward<Args>(args)...);
#endif
  detail::check_launch(what);
}

}  // namespace vera::cuda::detail
