// SPDX-License-Identifier: Apache-2.0
// Optional per-phase wall-clock timers for the BERT forward, backward and optimizer step: off (a
// null pointer test per phase) unless a program installs a phase_times, as bench/minilm_step does.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace minilm::profile {

/// \brief The parts of a training step that the timers tell apart.
enum class phase : std::size_t {
  embeddings,         ///< lookups and LayerNorm
  qv_projection,      ///< query and value: X W0ᵀ + bias plus the VeRA term (vera::forward)
  k_projection,       ///< key: X W0ᵀ + bias, the same shape without an adapter
  attention_gemm,     ///< Q Kᵀ and P V of every sequence and head
  softmax,            ///< padding mask and row softmax
  attention_output,   ///< attention.output.dense
  layer_norm,         ///< both LayerNorms of a layer, residuals included
  ffn_gemm,           ///< intermediate.dense and output.dense
  gelu,
  pooler_head,        ///< pooler, tanh and classifier
  loss,
  head_backward,      ///< classifier and pooler gradients down to the [CLS] rows
  layer_norm_backward,
  ffn_backward,       ///< dL/d of the FFN's input through both GEMMs
  gelu_backward,
  attention_output_backward,
  attention_backward_gemm,
  softmax_backward,
  qv_backward,        ///< vera::parameter_gradients and vera::input_gradient of query and value
  k_backward,         ///< dL/dX through the frozen key
  weight_gradients,   ///< dL/dW of trained base weights (LoRA, full fine-tuning)
  optimizer,
  count
};

/// \brief Display names, in the order of `phase`.
inline constexpr std::array<const char*, static_cast<std::size_t>(phase::count)> phase_names = {
    "embeddings",          "query/value projection (base + VeRA)",
    "key projection (base)", "attention GEMMs (QKᵀ, PV)",
    "softmax",             "attention output dense",
    "LayerNorm + residual", "FFN GEMMs",
    "GELU",                "pooler + head",
    "loss",                "head + pooler backward",
    "LayerNorm backward",  "FFN backward GEMMs",
    "GELU backward",       "attention output backward",
    "attention backward GEMMs", "softmax backward",
    "query/value backward (VeRA)", "key backward",
    "weight gradients",    "optimizer"};

/// \brief Seconds and calls accumulated per phase.
struct phase_times {
  std::array<double, static_cast<std::size_t>(phase::count)> seconds{};
  std::array<long, static_cast<std::size_t>(phase::count)> calls{};
  std::array<long, static_cast<std::size_t>(phase::count)> allocations{};  ///< with allocation_count set

  void clear() noexcept { *this = phase_times{}; }
  double total() const noexcept {
    double sum = 0;
    for (const double s : seconds) sum += s;
    return sum;
  }
};

/// \brief Where the timers add up; null (the default) turns them off. The timers are not
///        synchronised: inside an active OpenMP parallel region (more than one thread) they are off.
inline phase_times* active = nullptr;

/// \brief Optional: the process's running count of heap allocations (a program that counts
///        them sets it), read at both ends of each timed phase to find the phases that allocate.
inline long (*allocation_count)() = nullptr;

/// \brief Times its own lifetime into `active` under `which`.
class scope {
 public:
  using clock = std::chrono::steady_clock;
  explicit scope(phase which) noexcept : which_(which), target_(active) {
#ifdef _OPENMP
    if (omp_in_parallel()) target_ = nullptr;
#endif
    if (target_ == nullptr) return;
    if (allocation_count != nullptr) allocations_ = allocation_count();
    start_ = clock::now();
  }
  ~scope() {
    if (target_ == nullptr) return;
    const auto i = static_cast<std::size_t>(which_);
    target_->seconds[i] += std::chrono::duration<double>(clock::now() - start_).count();
    ++target_->calls[i];
    if (allocation_count != nullptr) target_->allocations[i] += allocation_count() - allocations_;
  }
  scope(const scope&) = delete;
  scope& operator=(const scope&) = delete;

 private:
  phase which_;
  phase_times* target_;
  clock::time_point start_{};
  long allocations_ = 0;
};

}  // namespace minilm::profile
