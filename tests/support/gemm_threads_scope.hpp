// SPDX-License-Identifier: Apache-2.0
// A scope that sets the GEMM thread count the CPU evaluators assume, for tests of both arrangements.
#pragma once

#include <vera/vera.hpp>

namespace vera_test {

/// Sets vera::set_gemm_threads for one scope and restores "ask the library" (0) after it.
struct gemm_threads_scope {
  explicit gemm_threads_scope(int threads) { vera::set_gemm_threads(threads); }
  ~gemm_threads_scope() { vera::set_gemm_threads(0); }
  gemm_threads_scope(const gemm_threads_scope&) = delete;
  gemm_threads_scope& operator=(const gemm_threads_scope&) = delete;
};

}  // namespace vera_test
