// SPDX-License-Identifier: Apache-2.0
// The CUDA runtime and cuBLAS calls the backend and its device checks make, on host memory, for
// the CPU emulation (emulate.hpp). "Device" memory is host memory handed out by cudaMalloc and
// tracked, so that every GEMM operand can be checked to lie inside one allocation. cublasGemmEx
// applies the argument rules of the cuBLAS documentation before a plain column-major product
// accumulated in float, and reads C only when beta is not 0, as cuBLAS does.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

std::mutex allocations_mutex;
std::map<std::uintptr_t, std::size_t>& allocations() {
  static std::map<std::uintptr_t, std::size_t> all;
  return all;
}

// True when [p, p + bytes) lies inside one allocation made by cudaMalloc.
bool inside_allocation(const void* p, std::size_t bytes) {
  const std::lock_guard<std::mutex> lock(allocations_mutex);
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  auto it = allocations().upper_bound(begin);
  if (it == allocations().begin()) return false;
  --it;
  return begin >= it->first && begin + bytes <= it->first + it->second;
}

std::size_t element_size(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    default: return 0;
  }
}

float load(const void* p, cudaDataType_t t, std::int64_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
}

void store(void* p, cudaDataType_t t, std::int64_t i, float v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = v; break;
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    default: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
  }
}

// A column-major rows x cols operand with leading dimension ld lies inside one allocation.
bool operand_inside(const char* name, const void* p, cudaDataType_t t, int rows, int cols, int ld) {
  if (rows == 0 || cols == 0) return true;
  const std::size_t last = static_cast<std::size_t>(cols - 1) * static_cast<std::size_t>(ld) + rows;
  if (inside_allocation(p, last * element_size(t))) return true;
  std::fprintf(stderr, "emulation: cublasGemmEx operand %s (%d x %d, ld %d) is not inside device memory\n", name, rows,
               cols, ld);
  return false;
}

}  // namespace

extern "C" {

cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  if (posix_memalign(p, 256, bytes == 0 ? 1 : bytes) != 0) return cudaErrorMemoryAllocation;
  const std::lock_guard<std::mutex> lock(allocations_mutex);
  allocations()[reinterpret_cast<std::uintptr_t>(*p)] = bytes;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  {
    const std::lock_guard<std::mutex> lock(allocations_mutex);
    if (allocations().erase(reinterpret_cast<std::uintptr_t>(p)) == 0) return cudaErrorInvalidValue;
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, std::size_t dpitch, const void* src, std::size_t spitch, std::size_t width,
                              std::size_t height, cudaMemcpyKind, cudaStream_t) {
  if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
  for (std::size_t r = 0; r < height; ++r) {
    std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
  }
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t) {
  if (!inside_allocation(dst, bytes)) return cudaErrorInvalidValue;
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  static int token = 0;
  *stream = reinterpret_cast<cudaStream_t>(&token);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* props, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  *props = cudaDeviceProp{};
  std::snprintf(props->name, sizeof props->name, "%s", "CPU emulation");
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
  *version = 0;
  return cudaSuccess;
}

// Events hold the host time at which they were recorded: the emulation runs every call when it
// is made, so the difference is the time the work took.
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new std::chrono::steady_clock::time_point());
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  *reinterpret_cast<std::chrono::steady_clock::time_point*>(event) = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  const auto& a = *reinterpret_cast<std::chrono::steady_clock::time_point*>(start);
  const auto& b = *reinterpret_cast<std::chrono::steady_clock::time_point*>(stop);
  *ms = std::chrono::duration<float, std::milli>(b - a).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<std::chrono::steady_clock::time_point*>(event);
  return cudaSuccess;
}
const char* cudaGetErrorName(cudaError_t) { return "cudaError (emulation)"; }
const char* cudaGetErrorString(cudaError_t) { return "an emulated runtime call failed"; }

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  static int token = 0;
  *handle = reinterpret_cast<cublasHandle_t>(&token);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t, void* workspace, std::size_t bytes) {
  return inside_allocation(workspace, bytes) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* a, cudaDataType_t a_type, int lda, const void* b,
                            cudaDataType_t b_type, int ldb, const void* beta, void* c, cudaDataType_t c_type, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
  const bool ta = transa != CUBLAS_OP_N;
  const bool tb = transb != CUBLAS_OP_N;
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) ||
      ldc < std::max(1, m)) {
    std::fprintf(stderr, "emulation: cublasGemmEx invalid value: ta %d tb %d m %d n %d k %d lda %d ldb %d ldc %d\n",
                 ta, tb, m, n, k, lda, ldb, ldc);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (element_size(a_type) == 0 || a_type != b_type || !(c_type == a_type || c_type == CUDA_R_32F)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (compute != CUBLAS_COMPUTE_32F && !(compute == CUBLAS_COMPUTE_32F_FAST_TF32 && a_type == CUDA_R_32F)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (!operand_inside("A", a, a_type, ta ? k : m, ta ? m : k, lda) ||
      !operand_inside("B", b, b_type, tb ? n : k, tb ? k : n, ldb) || !operand_inside("C", c, c_type, m, n, ldc)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const float al = *static_cast<const float*>(alpha);
  const float be = *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      float sum = 0.0f;
      for (int l = 0; l < k; ++l) {
        const float x = load(a, a_type, ta ? l + std::int64_t{i} * lda : i + std::int64_t{l} * lda);
        const float y = load(b, b_type, tb ? j + std::int64_t{l} * ldb : l + std::int64_t{j} * ldb);
        sum += x * y;
      }
      const std::int64_t at = i + std::int64_t{j} * ldc;
      store(c, c_type, at, be == 0.0f ? al * sum : al * sum + be * load(c, c_type, at));
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
