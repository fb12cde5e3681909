// SPDX-License-Identifier: Apache-2.0
// AdamW: Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch's AdamW rules).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "vera/core/optim_options.hpp"
#include "vera/optim/parameters.hpp"

namespace vera::optim {

/// \brief AdamW over registered buffers. At step t (from 1), per element with gradient g:
///        p *= 1 - lr * wd (decay only); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²;
///        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
///
/// Step counts are per parameter, as in PyTorch. Moment buffers are allocated on a parameter's
/// first step, so steady-state steps allocate nothing. A step first checks every gradient
/// (finite) and parameter (not locked) and throws before changing anything.
template <class T>
class adamw {
 public:
  /// \brief An optimizer with no parameters yet; register them with add().
  /// \throws value_error for an option out of range (named in the message).
  explicit adamw(const adamw_options& options = {}) : options_(options) {
    optim::validate(options_, "vera::optim::adamw");
  }

  /// \brief Registers buffers; see parameter_list::add for the overloads and their checks.
  template <class... Args>
  void add(Args&&... args) {
    parameters_.add(std::forward<Args>(args)...);
  }

  /// \brief One AdamW step over every registered parameter.
  /// \throws state_error for a locked parameter (a merged vera::linear), value_error for a
  ///         non-finite gradient element; both before any value changes.
  void step() {
    parameters_.check_step("vera::optim::adamw::step");
    slots_.grow(parameters_);
    ++steps_;
    const T b1 = static_cast<T>(options_.beta1);
    const T b2 = static_cast<T>(options_.beta2);
    const T eps = static_cast<T>(options_.eps);
    const T shrink = static_cast<T>(1.0 - options_.lr * options_.weight_decay);
    const auto& items = parameters_.items();
    for (std::size_t k = 0; k < items.size(); ++k) {
      const parameter<T>& p = items[k];
      const double t = static_cast<double>(++slots_.count(k));
      const T step_size = static_cast<T>(options_.lr / (1.0 - std::pow(options_.beta1, t)));
      const T root_correction2 = static_cast<T>(std::sqrt(1.0 - std::pow(options_.beta2, t)));
      const bool decay = p.decay && options_.weight_decay != 0.0;
      T* m = slots_.first(k);
      T* v = slots_.second(k);
      for (index i = 0; i < p.size; ++i) {
        const T g = p.gradient[i];
        if (decay) p.value[i] *= shrink;
        m[i] = b1 * m[i] + (T(1) - b1) * g;
        v[i] = b2 * v[i] + (T(1) - b2) * g * g;
        p.value[i] -= step_size * m[i] / (std::sqrt(v[i]) / root_correction2 + eps);
      }
    }
  }

  /// \brief Per-parameter step counts and moments (`first`, `second`), for a checkpoint.
  std::vector<slot_state<T>> state() const { return slots_.save(parameters_); }
  /// \brief Restores what state() returned (parameters matched by name, in any order), so that
  ///        training resumes exactly. Checks everything first (see parameter_list::match_state);
  ///        on error the optimizer is unchanged.
  /// \throws value_error for a missing or extra parameter or a non-finite value; shape_error
  ///         for a buffer of the wrong size.
  void load_state(const std::vector<slot_state<T>>& saved) {
    slots_.load(parameters_, saved, "vera::optim::adamw::load_state");
    steps_ = static_cast<std::size_t>(slots_.max_count());
  }

  /// \brief Changes the learning rate (for schedules); throws value_error when not finite or < 0.
  void set_lr(double lr) {
    detail::check_lr("vera::optim::adamw", lr);
    options_.lr = lr;
  }
  /// \brief The current settings (lr as last set by set_lr).
  const adamw_options& options() const noexcept { return options_; }
  /// \brief The registered parameters.
  const parameter_list<T>& parameters() const noexcept { return parameters_; }
  /// \brief Steps taken (after load_state: the most steps any parameter took).
  std::size_t steps() const noexcept { return steps_; }

 private:
  adamw_options options_;
  parameter_list<T> parameters_;
  slot_store<T> slots_{true, true};
  std::size_t steps_ = 0;
};

}  // namespace vera::optim
