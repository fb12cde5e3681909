// SPDX-License-Identifier: Apache-2.0
// How each operation carves the caller's workspace; the same plan sizes and fills it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/types.cuh"

namespace vera::cuda::detail {

/// Hands out aligned pieces of one buffer. With a null base it only counts bytes, so sizing and
/// carving can never disagree.
class carver {
 public:
  explicit carver(void* base = nullptr) : base_(static_cast<unsigned char*>(base)) {}

  template <class U>
  U* take(index count) {
    constexpr std::size_t alignment = 256;  // what cudaMalloc guarantees; suits every kernel
    used_ = (used_ + alignment - 1) / alignment * alignment;
    U* piece = base_ == nullptr ? nullptr : reinterpret_cast<U*>(base_ + used_);
    used_ += static_cast<std::size_t>(count) * sizeof(U);
    return piece;
  }
  std::size_t used() const noexcept { return used_; }

 private:
  unsigned char* base_;
  std::size_t used_ = 0;
};

template <class T>
struct forward_plan {
  T* scaled_b = nullptr;  // out x rank
  T* projected = nullptr; // n x rank, only when the caller keeps no context
  T* masked_x = nullptr;  // n x in, only with dropout
  forward_plan(carver& c, const layer_ref<T>& layer, index n, bool keeps_context, bool dropout) {
    scaled_b = c.take<T>(layer.out * layer.rank);
    if (!keeps_context) projected = c.take<T>(n * layer.rank);
    if (dropout) masked_x = c.take<T>(n * layer.in);
  }
};

template <class T>
struct parameter_gradient_plan {
  float* m = nullptr;         // out x rank: G^T P
  float* partials = nullptr;  // chunks x rank
  index chunks = 0;
  parameter_gradient_plan(carver& c, const layer_ref<T>& layer) {
    chunks = (layer.out + kernels::gradient_rows_per_block - 1) / kernels::gradient_rows_per_block;
    m = c.take<float>(layer.out * layer.rank);
    partials = c.take<float>(chunks * layer.rank);
  }
};

template <class T>
struct input_gradient_plan {
  T* scaled_b = nullptr;  // out x rank
  T* thin = nullptr;      // n x rank: (G Λb B) Λd
  T* tile = nullptr;      // n x in, only with dropout
  input_gradient_plan(carver& c, const layer_ref<T>& layer, index n, bool dropout) {
    scaled_b = c.take<T>(layer.out * layer.rank);
    thin = c.take<T>(n * layer.rank);
    if (dropout) tile = c.take<T>(n * layer.in);
  }
};

template <class T>
struct merge_plan {
  T* scaled_b = nullptr;   // out x rank
  T* candidate = nullptr;  // out x in, safe merge only
  merge_plan(carver& c, const layer_ref<T>& layer, bool safe) {
    scaled_b = c.take<T>(layer.out * layer.rank);
    if (safe) candidate = c.take<T>(layer.out * layer.in);
  }
};

}  // namespace vera::cuda::detail
