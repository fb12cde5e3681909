// SPDX-License-Identifier: Apache-2.0
// How many threads the GEMM library runs on: the CPU evaluators arrange small-batch products by it.
#pragma once

#include <atomic>
#include <string>

#include <Eigen/Core>

#include "vera/core/error.hpp"

#if defined(EIGEN_USE_BLAS) && (defined(__GNUC__) || defined(__clang__))
// OpenBLAS reports its thread count; declared weak, so other BLAS libraries link as well.
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
#define VERA_DETAIL_ASK_OPENBLAS 1
#else
#define VERA_DETAIL_ASK_OPENBLAS 0
#endif

namespace vera {

namespace detail {
/// The value set by set_gemm_threads; 0 means "ask the GEMM library".
inline std::atomic<int> gemm_threads_setting{0};
}  // namespace detail

/// \brief Tells the CPU evaluators how many threads the GEMM library runs on.
///
/// The count decides how small batches (2 to 64 rows) arrange the forward's products: with a
/// threaded BLAS they are issued as Y^T = W0 X^T, so that the long side is the one the BLAS splits
/// between threads (see docs/design.md). The result is the same up to floating-point rounding.
/// 0, the default, asks the library: OpenBLAS's own count when Eigen's products go to a BLAS
/// (EIGEN_USE_BLAS). Without a BLAS, Eigen's own GEMM keeps the direct arrangement unless a count
/// above 1 is set here (transposed was slower there), although gemm_threads() then reports
/// Eigen::nbThreads(). Set it when another BLAS runs threaded.
/// \throws vera::value_error when `threads` is negative.
inline void set_gemm_threads(int threads) {
  if (threads < 0) {
    throw value_error("vera::set_gemm_threads: threads must be >= 0 (0 asks the GEMM library), got " +
                      std::to_string(threads));
  }
  detail::gemm_threads_setting.store(threads, std::memory_order_relaxed);
}

/// \brief The thread count the CPU evaluators assume for GEMMs: the value given to
///        set_gemm_threads, or the GEMM library's own when that is 0.
inline int gemm_threads() {
  const int set = detail::gemm_threads_setting.load(std::memory_order_relaxed);
  if (set > 0) return set;
#if defined(EIGEN_USE_BLAS)
#if VERA_DETAIL_ASK_OPENBLAS
  if (&openblas_get_num_threads != nullptr) return openblas_get_num_threads();
#endif
  return 1;
#else
  return Eigen::nbThreads();
#endif
}

}  // namespace vera

#undef VERA_DETAIL_ASK_OPENBLAS
