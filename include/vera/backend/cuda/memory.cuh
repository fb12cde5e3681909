// SPDX-License-Identifier: Apache-2.0
// Owning device allocations for set-up time: buffers, the workspace and a cuBLAS handle.
#pragma once

#include <cstddef>
#include <utility>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "vera/backend/cuda/error.cuh"
#include "vera/backend/cuda/types.cuh"

namespace vera::cuda {

/// \brief count elements of T in device memory (cudaMalloc); move-only, freed on destruction.
///
/// Allocation and release synchronise the device: create buffers up front, not per step.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  /// \brief Allocates `count` elements (none for 0); contents are uninitialised.
  /// \throws cuda_error when cudaMalloc fails.
  explicit device_buffer(std::size_t count) : count_(count) {
    if (count != 0) check(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)), "cudaMalloc");
  }
  /// \brief Takes over `other`'s memory; `other` is left empty.
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  /// \brief Frees this buffer's memory and takes over `other`'s.
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { release(); }

  /// \brief Device pointer to the elements (null when empty).
  T* data() noexcept { return data_; }
  /// \brief Device pointer to the elements, read-only.
  const T* data() const noexcept { return data_; }
  /// \brief Number of elements.
  std::size_t size() const noexcept { return count_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) (void)cudaFree(data_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

/// \brief Scratch memory reserved up front; the operations only carve it, never allocate.
class workspace {
 public:
  /// \brief Grows to at least `bytes` (synchronising, like any cudaMalloc); never shrinks.
  /// \throws cuda_error when the allocation fails.
  void reserve(std::size_t bytes) {
    if (bytes > buffer_.size()) buffer_ = device_buffer<unsigned char>(bytes);
  }
  /// \brief The reserved memory as the operations take it.
  workspace_ref ref() noexcept { return {buffer_.data(), buffer_.size()}; }
  /// \brief Bytes reserved.
  std::size_t bytes() const noexcept { return buffer_.size(); }

 private:
  device_buffer<unsigned char> buffer_;
};

/// \brief A cuBLAS handle bound to the caller's stream, with its own cuBLAS workspace given at
///        construction so that no GEMM allocates later.
class handle {
 public:
  /// Enough for cuBLAS's largest recommended workspace (Hopper).
  static constexpr std::size_t cublas_workspace_bytes = std::size_t{32} << 20;

  /// \brief Creates a cuBLAS handle on `stream` with a cuBLAS workspace of cublas_workspace_bytes.
  /// \throws cuda_error when allocation or a cuBLAS call fails.
  explicit handle(cudaStream_t stream, bool allow_tf32 = false)
      : cublas_workspace_(cublas_workspace_bytes) {
    check(cublasCreate(&context_.cublas), "cublasCreate");
    context_.stream = stream;
    context_.allow_tf32 = allow_tf32;
    try {
      check(cublasSetStream(context_.cublas, stream), "cublasSetStream");
      check(cublasSetWorkspace(context_.cublas, cublas_workspace_.data(), cublas_workspace_.size()),
            "cublasSetWorkspace");
    } catch (...) {
      (void)cublasDestroy(context_.cublas);
      throw;
    }
  }
  handle(const handle&) = delete;
  handle& operator=(const handle&) = delete;
  ~handle() { (void)cublasDestroy(context_.cublas); }

  /// \brief What the operations take: the stream and the handle.
  const stream_context& context() const noexcept { return context_; }

 private:
  device_buffer<unsigned char> cublas_workspace_;
  stream_context context_;
};

}  // namespace vera::cuda
