// SPDX-License-Identifier: Apache-2.0
// Turns CUDA runtime and cuBLAS status codes into vera exceptions that name the failing call.
#pragma once

#include <string>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "vera/core/error.hpp"

namespace vera::cuda {

/// \brief The CUDA runtime or cuBLAS reported a failure (no device, out of memory, bad launch).
class cuda_error : public error {
 public:
  using error::error;
};

/// \brief Throws cuda_error when `status` is not cudaSuccess; `what` names the call.
inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw cuda_error(std::string(what) + ": " + cudaGetErrorName(status) + " (" +
                     cudaGetErrorString(status) + ")");
  }
}

/// \brief Throws cuda_error when `status` is not CUBLAS_STATUS_SUCCESS; `what` names the call.
inline void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw cuda_error(std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(status)));
  }
}

namespace detail {

/// \brief Reports a failed kernel launch (bad configuration, no device) without synchronising.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace detail

}  // namespace vera::cuda
