// SPDX-License-Identifier: Apache-2.0
// Feature macros and version: every macro is defined to 0 or 1 and tested with #if.
#pragma once

#define VERA_VERSION_MAJOR 0
#define VERA_VERSION_MINOR 1
#define VERA_VERSION_PATCH 0
#define VERA_VERSION_STRING "0.1.0"

// The CUDA backend is opt-in: it is enabled by including <vera/cuda.hpp> from a build that
// has the CUDA Toolkit; host-only builds never see a CUDA header.
#ifndef VERA_ENABLE_CUDA
#define VERA_ENABLE_CUDA 0
#endif


#if VERA_ENABLE_CUDA != 0 && VERA_ENABLE_CUDA != 1
#error "VERA_ENABLE_CUDA must be 0 or 1"
#endif

namespace vera {
/// \brief Library version as "major.minor.patch".
inline constexpr const char* version_string = VERA_VERSION_STRING;
}  // namespace vera
