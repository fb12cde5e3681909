// SPDX-License-Identifier: Apache-2.0
// Non-owning views of device memory, the storage types the backend accepts, and the call context.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "vera/config.hpp"
#include "vera/core/exec.hpp"
#include "vera/core/shape.hpp"

namespace vera::cuda {

/// \brief Row-major device matrix: element (i, j) is data[i * stride + j], stride >= cols.
///
/// A view never owns memory; T may be const-qualified for inputs.
template <class T>
struct matrix_ref {
  T* data = nullptr;  ///< element (0, 0); null for an empty or absent operand
  index rows = 0;  ///< number of rows
  index cols = 0;  ///< number of columns
  index stride = 0;  ///< elements between the starts of consecutive rows, >= cols

  /// A writable view converts to a read-only one.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_const_v<U>>>
  matrix_ref(const matrix_ref<U>& other)  // NOLINT(google-explicit-constructor)
      : data(other.data), rows(other.rows), cols(other.cols), stride(other.stride) {}
  matrix_ref() = default;
  /// \brief Views `r` x `c` elements at `d` with row stride `s`; nothing is checked here (the
  ///        operations validate their operands).
  matrix_ref(T* d, index r, index c, index s) : data(d), rows(r), cols(c), stride(s) {}
};

namespace detail {

/// X itself, in a context where template arguments are not deduced: the storage type of a call
/// follows from its layer alone, so a writable matrix_ref<T> binds where matrix_ref<const T> is
/// expected and a null bias needs no cast.
template <class X>
using nondeduced = typename std::enable_if<true, X>::type;

}  // namespace detail

/// A read-only operand of storage type T.
template <class T>
using input_ref = detail::nondeduced<matrix_ref<const T>>;

/// \brief A dense row-major view (stride = cols) of rows x cols elements at `data`.
template <class T>
matrix_ref<T> dense(T* data, index rows, index cols) {
  return {data, rows, cols, cols};
}

/// \brief What the backend knows of a storage type: its cuBLAS data type, its name, and the
///        conversions to and from float32 (every operation computes in float32 and rounds once,
///        to nearest even, when it stores). Defined for float, __half and __nv_bfloat16; naming
///        any other type fails to compile with one message.
template <class T, class = void>
struct storage {
  static_assert(vera::detail::dependent_false<T>, "vera::cuda: storage must be float, __half or __nv_bfloat16");
};

template <>
struct storage<float> {
  static constexpr cudaDataType_t type = CUDA_R_32F;  ///< cuBLAS data type
  static constexpr const char* name = "float32";  ///< name used in messages
  /// \brief The value as float32.
  VERA_HOST_DEVICE static float to_float(float v) { return v; }
  /// \brief v stored as float32.
  VERA_HOST_DEVICE static float from_float(float v) { return v; }
};

/// \brief The two 16-bit storage types, float16 (__half) and bfloat16 (__nv_bfloat16).
template <class T>
struct storage<T, std::enable_if_t<std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>>> {
  static constexpr bool is_half = std::is_same_v<T, __half>;  ///< float16 rather than bfloat16
  static constexpr cudaDataType_t type = is_half ? CUDA_R_16F : CUDA_R_16BF;  ///< cuBLAS data type
  static constexpr const char* name = is_half ? "float16" : "bfloat16";  ///< name used in messages
  /// \brief The value as float32 (exact).
  VERA_HOST_DEVICE static float to_float(T v) {
    if constexpr (is_half) {
      return __half2float(v);
    } else {
      return __bfloat162float(v);
    }
  }
  /// \brief v rounded to the storage type, to nearest even.
  VERA_HOST_DEVICE static T from_float(float v) {
    if constexpr (is_half) {
      return __float2half_rn(v);
    } else {
      return __float2bfloat16_rn(v);
    }
  }
};

namespace detail {

/// \brief True for the storage types the backend supports; for any other type, instantiating it
///        reports storage's one message.
template <class T>
inline constexpr bool is_storage = sizeof(storage<T>) > 0;

}  // namespace detail

/// \brief The shared projection on the device: A (rank x max_in) and B (max_out x rank), full,
///        dense row-major, in storage type T. A layer reads A[:r, :in] and B[:out, :r].
template <class T>
struct projection_ref {
  const T* a = nullptr;  ///< A, rank x max_in, dense row-major
  const T* b = nullptr;  ///< B, max_out x rank, dense row-major
  index rank = 0;  ///< rows of A, columns of B
  index max_in = 0;  ///< columns of A
  index max_out = 0;  ///< rows of B
};

/// \brief One adapted layer on the device: its extents, the shared projection and the trainable
///        vectors lambda_b (out floats) and lambda_d (rank floats), kept in float32 for training.
///
/// With fan_in_fan_out the base weight is stored in x out (GPT-2 Conv1D) instead of out x in.
template <class T>
struct layer_ref {
  projection_ref<T> projection;  ///< the shared A and B
  index in = 0;  ///< input features (<= projection.max_in)
  index out = 0;  ///< output features (<= projection.max_out)
  index rank = 0;  ///< this layer's rank (<= projection.rank)
  const float* lambda_b = nullptr;  ///< out floats on the device
  const float* lambda_d = nullptr;  ///< rank floats on the device
  bool fan_in_fan_out = false;  ///< W0 stored in x out
};

/// \brief Where work is queued: the caller's stream and a cuBLAS handle bound to it.
///
/// Every call enqueues on `stream` and returns without waiting; allow_tf32 lets float32 GEMMs
/// use TF32 tensor cores (off by default, as in PyTorch for matmul).
struct stream_context {
  cudaStream_t stream = nullptr;  ///< the stream every call enqueues on
  cublasHandle_t cublas = nullptr;  ///< a cuBLAS handle bound to `stream`
  bool allow_tf32 = false;  ///< let float32 GEMMs use TF32 tensor cores
};

/// \brief Caller-owned scratch memory on the device (see workspace_bytes).
struct workspace_ref {
  void* data = nullptr;  ///< device memory, 256-byte aligned as cudaMalloc returns it
  std::size_t bytes = 0;  ///< size of the memory at `data`
};

}  // namespace vera::cuda
