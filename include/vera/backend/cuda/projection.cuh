// SPDX-License-Identifier: Apache-2.0
// The shared projection on the device: regenerated there (counter-based) or uploaded once (PEFT).
#pragma once

#include <cstddef>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/launch.cuh"
#include "vera/backend/cuda/memory.cuh"
#include "vera/backend/cuda/validate.cuh"
#include "vera/core/projection_spec.hpp"

namespace vera::cuda {

namespace detail {

template <class T>
void check_projection_targets(const char* operation, const projection_spec& spec,
                              const matrix_ref<T>& a, const matrix_ref<T>& b) {
  validate(spec);
  check_matrix("projection A", a, spec.rank, spec.max_in);
  check_matrix("projection B", b, spec.max_out, spec.rank);
  check_disjoint(operation, range_of("projection A", a), {range_of("projection B", b)});
}

template <class T>
void upload_matrix(cudaStream_t stream, const float* host, index rows, index cols,
                   const matrix_ref<T>& target, std::vector<T>& staging) {
  const T* source = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    source = host;
  } else {
    staging.resize(static_cast<std::size_t>(rows * cols));
    for (std::size_t i = 0; i < staging.size(); ++i) staging[i] = storage<T>::from_float(host[i]);
    source = staging.data();
  }
  check(cudaMemcpy2DAsync(target.data, sizeof(T) * target.stride, source, sizeof(T) * cols,
                          sizeof(T) * cols, rows, cudaMemcpyHostToDevice, stream),
        "vera::cuda::upload_projection cudaMemcpy2DAsync");
}

}  // namespace detail

/// \brief Fills a (rank x max_in) and b (max_out x rank) on the device from the counter-based
///        generator, enqueued on `stream` without synchronising.
///
/// Only generator::philox can run on the device: its element (i, j) is a pure function of
/// (seed, matrix, i, j), computed by the same function as on the CPU, so float32 results are
/// bit-identical to generate_projection(). Throws value_error for generator::peft, whose mt19937
/// stream is sequential: generate that on the host and use upload_projection().
/// \throws aliasing_error when A and B overlap.
/// \throws value_error also for a bad spec; shape_error for targets of the wrong shape;
///         cuda_error when a launch fails.
template <class T>
void generate_projection(cudaStream_t stream, const projection_spec& spec, matrix_ref<T> a,
                         matrix_ref<T> b) {
  static_assert(detail::is_storage<T>);
  if (spec.kind != generator::philox) {
    throw value_error(
        "vera::cuda::generate_projection: only generator::philox runs on the device; generate PEFT's mt19937 "
        "projection on the host and call upload_projection");
  }
  detail::check_projection_targets("vera::cuda::generate_projection", spec, a, b);
  const float bound_a = vera::detail::kaiming_uniform_bound(spec.max_in);
  const float bound_b = vera::detail::kaiming_uniform_bound(spec.rank);
  detail::launch("vera::cuda::generate_projection A", detail::kernels::philox_fill<T>,
                 detail::kernels::grid_for(spec.rank * spec.max_in), stream, spec.seed, 0u, spec.rank, spec.max_in,
                 bound_a, a.data, a.stride);
  detail::launch("vera::cuda::generate_projection B", detail::kernels::philox_fill<T>,
                 detail::kernels::grid_for(spec.max_out * spec.rank), stream, spec.seed, 1u, spec.max_out, spec.rank,
                 bound_b, b.data, b.stride);
}

/// \brief Copies a host projection (row-major float32, A rank x max_in, B max_out x rank, as
///        generate_projection() on the CPU makes it) to the device, rounding to T there.
/// \throws value_error for a bad spec or null host pointers; shape_error for targets of the
///         wrong shape; aliasing_error when A and B overlap; cuda_error when a copy, launch or
///         synchronisation fails.
///
/// Set-up, not hot path: it synchronises `stream` before returning, so the host arrays may be
/// freed at once.
template <class T>
void upload_projection(cudaStream_t stream, const projection_spec& spec, const float* host_a,
                       const float* host_b, matrix_ref<T> a, matrix_ref<T> b) {
  static_assert(detail::is_storage<T>);
  detail::check_projection_targets("vera::cuda::upload_projection", spec, a, b);
  detail::check_pointer("host projection A", host_a);
  detail::check_pointer("host projection B", host_b);
  std::vector<T> staging_a;
  std::vector<T> staging_b;
  detail::upload_matrix(stream, host_a, spec.rank, spec.max_in, a, staging_a);
  detail::upload_matrix(stream, host_b, spec.max_out, spec.rank, b, staging_b);
  check(cudaStreamSynchronize(stream), "vera::cuda::upload_projection cudaStreamSynchronize");
}

/// \brief Owns a projection pair on the device; view() is what layers refer to.
template <class T>
class device_projection {
 public:
  /// \brief Allocates and fills A and B for `spec`: philox on the device (no wait), PEFT on the
  ///        host followed by one upload (which synchronises `stream`).
  /// \throws value_error for a bad spec; cuda_error when allocation, a launch or the upload
  ///         fails.
  device_projection(const projection_spec& spec, cudaStream_t stream)
      : spec_((validate(spec), spec)),
        a_(static_cast<std::size_t>(spec.rank * spec.max_in)),
        b_(static_cast<std::size_t>(spec.max_out * spec.rank)) {
    if (spec.kind == generator::philox) {
      generate_projection<T>(stream, spec, a_view(), b_view());
      return;
    }
    std::vector<float> host_a(a_.size());
    std::vector<float> host_b(b_.size());
    vera::generate_projection(spec, host_a.data(), host_b.data());
    upload_projection<T>(stream, spec, host_a.data(), host_b.data(), a_view(), b_view());
  }

  /// \brief The spec A and B were generated from.
  const projection_spec& spec() const noexcept { return spec_; }
  /// \brief A and B as layers refer to them; valid while this object lives.
  projection_ref<T> view() const noexcept {
    return {a_.data(), b_.data(), spec_.rank, spec_.max_in, spec_.max_out};
  }

 private:
  matrix_ref<T> a_view() { return dense(a_.data(), spec_.rank, spec_.max_in); }
  matrix_ref<T> b_view() { return dense(b_.data(), spec_.max_out, spec_.rank); }

  projection_spec spec_;
  device_buffer<T> a_;
  device_buffer<T> b_;
};

}  // namespace vera::cuda
