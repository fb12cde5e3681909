// SPDX-License-Identifier: Apache-2.0
// Optimizer steps on the device for the trained float32 vectors (lambda_b, lambda_d): PyTorch's
// SGD and AdamW rules, as vera::optim applies them on the host, so that a training loop on the
// GPU needs no round trip through host memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <array>
#include <string>

#include "vera/backend/cuda/kernels.cuh"
#include "vera/backend/cuda/launch.cuh"
#include "vera/backend/cuda/validate.cuh"
#include "vera/core/optim_options.hpp"

namespace vera::cuda {

/// \brief One trained float32 vector on the device, its gradient and its optimizer state.
///
/// `state` and `second` are the optimizer's buffers of `size` floats each, owned by the caller and
/// zeroed before the first step: SGD's momentum buffer in `state` (unused without momentum),
/// AdamW's first and second moments in `state` and `second`.
struct optimizer_slot {
  float* value = nullptr;  ///< size floats, updated in place
  const float* gradient = nullptr;  ///< size floats
  float* state = nullptr;  ///< size floats: momentum buffer (SGD) or first moment (AdamW)
  float* second = nullptr;  ///< size floats: second moment (AdamW; unused by SGD)
  index size = 0;  ///< number of elements
  bool decay = true;  ///< whether weight decay applies
};

/// \brief SGD settings: vera::optim's, so host and device steps take the same values and checks.
using sgd_settings = vera::optim::sgd_options;

/// \brief AdamW settings: vera::optim's, so host and device steps take the same values and checks.
using adamw_settings = vera::optim::adamw_options;

namespace detail::kernels {

/// PyTorch's SGD on one vector; skipped entirely when *rejected is set. (A template so that the
/// header can be included by several translation units of one program.)
template <class Unused = void>
__global__ void sgd_update(float* value, const float* gradient, float* buffer, std::int64_t size, float lr,
                           float momentum, float damp, float weight_decay, bool first, bool nesterov,
                           const int* rejected) {
  if (rejected != nullptr && *rejected != 0) return;
  for (std::int64_t i = first_thread(); i < size; i += thread_stride()) {
    float g = gradient[i];
    if (weight_decay != 0.0f) g += weight_decay * value[i];
    if (buffer != nullptr) {
      buffer[i] = first ? g : momentum * buffer[i] + damp * g;
      g = nesterov ? g + momentum * buffer[i] : buffer[i];
    }
    value[i] -= lr * g;
  }
}

/// PyTorch's AdamW on one vector (shrink = 1 - lr * wd, or 1 without decay); skipped entirely when
/// *rejected is set.
template <class Unused = void>
__global__ void adamw_update(float* value, const float* gradient, float* first, float* second, std::int64_t size,
                             float beta1, float beta2, float eps, float shrink, float step_size,
                             float root_correction2, const int* rejected) {
  if (rejected != nullptr && *rejected != 0) return;
  for (std::int64_t i = first_thread(); i < size; i += thread_stride()) {
    const float g = gradient[i];
    if (shrink != 1.0f) value[i] *= shrink;
    first[i] = beta1 * first[i] + (1.0f - beta1) * g;
    second[i] = beta2 * second[i] + (1.0f - beta2) * g * g;
    value[i] -= step_size * first[i] / (sqrtf(second[i]) / root_correction2 + eps);
  }
}

}  // namespace detail::kernels

namespace detail {

/// The buffers a slot writes: its value and the state buffers the rule uses (`moments`: 0, 1 or
/// 2); unused ones are empty ranges, which overlap nothing.
inline std::array<byte_range, 3> written_by(const optimizer_slot& s, int moments) {
  const auto count = static_cast<std::size_t>(s.size);
  return {range_of("slot value", s.value, count),
          range_of("slot state", moments >= 1 ? s.state : nullptr, count),
          range_of("slot second", moments >= 2 ? s.second : nullptr, count)};
}

/// Every slot's pointers and sizes, and no written buffer sharing memory with anything else the
/// step reads or writes: every gradient, the other written buffers, the flag. Allocates nothing.
inline void check_slots(const char* operation, std::initializer_list<optimizer_slot> slots, int moments,
                        const int* rejected) {
  for (const optimizer_slot& s : slots) {
    if (s.size < 0) {
      throw value_error(std::string(operation) + ": slot size must be >= 0, got " + std::to_string(s.size));
    }
    check_int(operation, "slot size", s.size);
    if (s.size == 0) continue;
    check_pointer("slot value", s.value);
    check_pointer("slot gradient", s.gradient);
    if (moments >= 1) check_pointer("slot state", s.state);
    if (moments >= 2) check_pointer("slot second", s.second);
  }
  const byte_range flag = range_of("rejected flag", rejected, rejected != nullptr ? 1 : 0);
  for (auto a = slots.begin(); a != slots.end(); ++a) {
    const std::array<byte_range, 3> mine = written_by(*a, moments);
    for (std::size_t k = 0; k < mine.size(); ++k) {
      for (const optimizer_slot& other : slots) {
        check_disjoint(operation, mine[k], {range_of("slot gradient", other.gradient, static_cast<std::size_t>(other.size))});
      }
      for (std::size_t l = k + 1; l < mine.size(); ++l) check_disjoint(operation, mine[k], {mine[l]});
      for (auto b = a + 1; b != slots.end(); ++b) check_disjoint(operation, mine[k], written_by(*b, moments));
      check_disjoint(operation, mine[k], {flag});
    }
  }
}

/// With a flag: zero it, then set it when any gradient element is not finite, so that the update
/// kernels (which read it) leave everything unchanged.
inline void flag_gradients(cudaStream_t stream, std::initializer_list<optimizer_slot> slots, int* rejected,
                           const char* operation) {
  if (rejected == nullptr) return;
  check(cudaMemsetAsync(rejected, 0, sizeof(int), stream), operation);
  for (const optimizer_slot& s : slots) {
    if (s.size == 0) continue;
    launch(operation, detail::kernels::flag_non_finite<float>, detail::kernels::grid_for(s.size), stream, s.gradient,
           std::int64_t{1}, s.size, s.size, rejected);
  }
}

}  // namespace detail

/// \brief One SGD step over `slots`, enqueued on `stream`: per element, with g the gradient,
///        g += wd * p (decay only); buf = g on the first step, else buf = momentum * buf +
///        (1 - dampening) * g; g = nesterov ? g + momentum * buf : buf; p -= lr * g.
///
/// `first_step` is true for a slot's first step (PyTorch: "buf is None"). With `rejected` (one
/// device int), the step first checks every gradient and, if any element is NaN or infinite, sets
/// the flag and changes nothing; read it after synchronising. Allocates nothing.
/// \throws value_error for a setting out of range, a negative size, a null pointer; aliasing_error
///         when a written buffer overlaps another buffer of the step; before any device work.
inline void sgd_step(cudaStream_t stream, const sgd_settings& o, bool first_step,
                     std::initializer_list<optimizer_slot> slots, int* rejected = nullptr) {
  const char* operation = "vera::cuda::sgd_step";
  vera::optim::validate(o, operation);
  const bool momentum = o.momentum != 0.0;
  detail::check_slots(operation, slots, momentum ? 1 : 0, rejected);
  detail::flag_gradients(stream, slots, rejected, operation);
  for (const optimizer_slot& s : slots) {
    if (s.size == 0) continue;
    detail::launch(operation, detail::kernels::sgd_update<>, detail::kernels::grid_for(s.size), stream, s.value, s.gradient,
                   momentum ? s.state : nullptr, s.size, static_cast<float>(o.lr), static_cast<float>(o.momentum),
                   static_cast<float>(1.0 - o.dampening), s.decay ? static_cast<float>(o.weight_decay) : 0.0f,
                   first_step, o.nesterov, static_cast<const int*>(rejected));
  }
}

/// \brief One AdamW step over `slots`, enqueued on `stream`: at step t (from 1), per element with
///        gradient g: p *= 1 - lr * wd (decay only); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²;
///        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
///
/// `step` counts this slot's steps from 1 (the caller keeps it, e.g. in a checkpoint). With
/// `rejected` the step is skipped on the device when a gradient is not finite, as in sgd_step;
/// the caller then does not count it. Allocates nothing.
/// \throws value_error for a setting out of range, step 0, a negative size, a null pointer;
///         aliasing_error when a written buffer overlaps another buffer of the step; before any
///         device work.
inline void adamw_step(cudaStream_t stream, const adamw_settings& o, std::uint64_t step,
                       std::initializer_list<optimizer_slot> slots, int* rejected = nullptr) {
  const char* operation = "vera::cuda::adamw_step";
  vera::optim::validate(o, operation);
  if (step == 0) throw value_error(std::string(operation) + ": step counts from 1, got 0");
  detail::check_slots(operation, slots, 2, rejected);
  detail::flag_gradients(stream, slots, rejected, operation);
  const double t = static_cast<double>(step);
  const auto step_size = static_cast<float>(o.lr / (1.0 - std::pow(o.beta1, t)));
  const auto root_correction2 = static_cast<float>(std::sqrt(1.0 - std::pow(o.beta2, t)));
  const auto shrink = static_cast<float>(1.0 - o.lr * o.weight_decay);
  for (const optimizer_slot& s : slots) {
    if (s.size == 0) continue;
    const bool decay = s.decay && o.weight_decay != 0.0;
    detail::launch(operation, detail::kernels::adamw_update<>, detail::kernels::grid_for(s.size), stream, s.value, s.gradient, s.state,
                   s.second, s.size, static_cast<float>(o.beta1), static_cast<float>(o.beta2),
                   static_cast<float>(o.eps), decay ? shrink : 1.0f, step_size, root_correction2,
                   static_cast<const int*>(rejected));
  }
}

}  // namespace vera::cuda
