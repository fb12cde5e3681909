// SPDX-License-Identifier: Apache-2.0
// Feature macros and version: every macro is defined to 0 or 1 and tested with #if.
#pragma once

#define VERA_VERSION_MAJOR 0
#define VERA_VERSION_MINOR 1
#define VERA_VERSION_PATCH 0
#define VERA_VERSION_STRING "0.1.0"

// The CUDA backend is opt-in: the vera::cuda CMake target defines this to 1 for its users, and
// only nvcc translation units include <vera/cuda.hpp>; host-only builds never see a CUDA header.
#ifndef VERA_ENABLE_CUDA
#define VERA_ENABLE_CUDA 0
#endif

// The CPU backend's GEMM provider: Eigen's own GEMM (or the system BLAS under EIGEN_USE_BLAS) by
// default; with VERA_ONEDNN = 1 (the vera::onednn CMake target sets it) float32 and bfloat16 GEMMs
// on plain strided memory run in oneDNN's matmul, everything else stays with Eigen.
#ifndef VERA_ONEDNN
#define VERA_ONEDNN 0
#endif

#if VERA_ONEDNN != 0 && VERA_ONEDNN != 1
#error "VERA_ONEDNN must be 0 or 1"
#endif

#if VERA_ENABLE_CUDA != 0 && VERA_ENABLE_CUDA != 1
#error "VERA_ENABLE_CUDA must be 0 or 1"
#endif

// Marks the few core functions that device code shares with the host (the counter-based
// generator), so CPU and GPU compute their bits from one definition. Empty for host compilers.
#if defined(__CUDACC__)
#define VERA_HOST_DEVICE __host__ __device__
#else
#define VERA_HOST_DEVICE
#endif

namespace vera {
/// \brief Library version as "major.minor.patch".
inline constexpr const char* version_string = VERA_VERSION_STRING;
}  // namespace vera
