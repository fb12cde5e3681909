// SPDX-License-Identifier: Apache-2.0
// A minimal check counter for the CUDA test programs: nvcc builds them without a test framework.
#pragma once

#include <cstdio>

#include <cuda_runtime.h>

namespace vera_test {

inline int& failures() {
  static int count = 0;
  return count;
}
inline int& checks() {
  static int count = 0;
  return count;
}

/// Exit code CTest reads as "skipped" (SKIP_RETURN_CODE).
inline constexpr int skipped = 77;

/// True when a CUDA device can run kernels; prints the skip line otherwise.
inline bool device_present() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    std::printf("SKIPPED: no CUDA device (%s)\n",
                status != cudaSuccess ? cudaGetErrorName(status) : "device count is 0");
    return false;
  }
  return true;
}

inline int summary(const char* program) {
  std::printf("%s: %d checks, %d failed\n", program, checks(), failures());
  return failures() == 0 ? 0 : 1;
}

}  // namespace vera_test

#define VERA_CHECK(condition)                                                   \
  do {                                                                          \
    ++vera_test::checks();                                                      \
    if (!(condition)) {                                                         \
      ++vera_test::failures();                                                  \
      std::printf("%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
    }                                                                           \
  } while (0)

/// Expects `statement` to throw `exception_type` whose message contains `fragment`.
#define VERA_CHECK_THROWS(statement, exception_type, fragment)                                  \
  do {                                                                                          \
    ++vera_test::checks();                                                                      \
    bool vera_thrown = false;                                                                   \
    try {                                                                                       \
      statement;                                                                                \
    } catch (const exception_type& e) {                                                         \
      vera_thrown = std::string(e.what()).find(fragment) != std::string::npos;                  \
      if (!vera_thrown) std::printf("%s:%d: message was: %s\n", __FILE__, __LINE__, e.what()); \
    } catch (const std::exception& e) {                                                         \
      std::printf("%s:%d: other exception: %s\n", __FILE__, __LINE__, e.what());                \
    }                                                                                           \
    if (!vera_thrown) {                                                                         \
      ++vera_test::failures();                                                                  \
      std::printf("%s:%d: expected %s from %s\n", __FILE__, __LINE__, #exception_type,          \
                  #statement);                                                                  \
    }                                                                                           \
  } while (0)
