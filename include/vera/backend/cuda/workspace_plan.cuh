// SPDX-License-Identifier: Apache-2.0
// How each operation carves the caller's workspace; the same plan sizes and fills it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/types.cuh"
#include "vera/expr/cost.hpp"

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
  T* scaled_b = nullptr;   // out x rank
  T* weight = nullptr;     // W0 + ΔW as W0 is stored, merged order only
  T* projected = nullptr;  // n x rank, low-rank order without a caller's context
  T* masked_x = nullptr;   // n x in, only with dropout
  forward_plan(carver& c, const layer_ref<T>& layer, index n, bool keeps_context, bool dropout, order chosen) {
    scaled_b = c.take<T>(layer.out * layer.rank);
    if (chosen == order::merged) weight = c.take<T>(layer.out * layer.in);
    if (!keeps_context && chosen == order::low_rank) projected = c.take<T>(n * layer.rank);
    if (dropout) masked_x = c.take<T>(n * layer.in);
  }
};

template <class T>
struct parameter_gradient_plan {
  float* m = nullptr;         // out x rank: G^T P
  float* partials = nullptr;  // chunks x rank
  index chunks = 0;
  parameter_gradient_plan(carver& c, const layer_ref<T>& layer) {
    chunks = (layer.out + detail::kernels::gradient_rows_per_block - 1) / detail::kernels::gradient_rows_per_block;
    m = c.take<float>(layer.out * layer.rank);
    partials = c.take<float>(chunks * layer.rank);
  }
};

template <class T>
struct input_gradient_plan {
  T* scaled_b = nullptr;  // out x rank
  T* weight = nullptr;    // W0 + ΔW as W0 is stored, merged order only
  T* thin = nullptr;      // n x rank: (G Λb B) Λd, low-rank order only
  T* tile = nullptr;      // n x in, only with dropout
  input_gradient_plan(carver& c, const layer_ref<T>& layer, index n, bool dropout, order chosen) {
    scaled_b = c.take<T>(layer.out * layer.rank);
    if (chosen == order::merged) {
      weight = c.take<T>(layer.out * layer.in);
    } else {
      thin = c.take<T>(n * layer.rank);
    }
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
