// SPDX-License-Identifier: Apache-2.0
// Stochastic gradient descent with momentum, Nesterov and L2 weight decay (PyTorch's SGD rules).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <utility>
#include <vector>

#include "vera/core/optim_options.hpp"
#include "vera/optim/parameters.hpp"

namespace vera::optim {

/// \brief SGD over registered buffers: per element, with g the gradient,
///        g += wd * p (decay only); buf = g on the first step, else
///        buf = momentum * buf + (1 - dampening) * g; g = nesterov ? g + momentum * buf : buf;
///        p -= lr * g.
///
/// Momentum buffers are allocated on the first step, so steady-state steps allocate nothing.
/// A step first checks every gradient (finite) and parameter (not locked) and throws before
/// changing anything.
template <class T>
class sgd {
 public:
  /// \brief An optimizer with no parameters yet; register them with add().
  /// \throws value_error for an option out of range (named in the message).
  explicit sgd(const sgd_options& options = {})
      : options_(options), slots_(options.momentum != 0.0, false) {
    optim::validate(options_, "vera::optim::sgd");
  }

  /// \brief Registers buffers; see parameter_list::add for the overloads and their checks.
  template <class... Args>
  void add(Args&&... args) {
    parameters_.add(std::forward<Args>(args)...);
  }

  /// \brief One SGD step over every registered parameter.
  /// \throws state_error for a locked parameter (a merged vera::linear), value_error for a
  ///         non-finite gradient element; both before any value changes.
  void step() {
    parameters_.check_step("vera::optim::sgd::step");
    slots_.grow(parameters_);
    const T lr = static_cast<T>(options_.lr);
    const T mu = static_cast<T>(options_.momentum);
    const T damp = static_cast<T>(1.0 - options_.dampening);
    const T wd = static_cast<T>(options_.weight_decay);
    const auto& items = parameters_.items();
    for (std::size_t k = 0; k < items.size(); ++k) {
      const parameter<T>& p = items[k];
      const bool decay = p.decay && options_.weight_decay != 0.0;
      T* buf = options_.momentum != 0.0 ? slots_.first(k) : nullptr;
      const bool first = slots_.count(k) == 0;  // torch: "buf is None"
      for (index i = 0; i < p.size; ++i) {
        T g = p.gradient[i];
        if (decay) g += wd * p.value[i];
        if (buf != nullptr) {
          buf[i] = first ? g : mu * buf[i] + damp * g;
          g = options_.nesterov ? g + mu * buf[i] : buf[i];
        }
        p.value[i] -= lr * g;
      }
      ++slots_.count(k);
    }
    ++steps_;
  }

  /// \brief Per-parameter step counts and momentum buffers (in `first`), for a checkpoint.
  std::vector<slot_state<T>> state() const { return slots_.save(parameters_); }
  /// \brief Restores what state() returned (parameters matched by name, in any order). Checks
  ///        everything first; on error the optimizer is unchanged.
  /// \throws value_error for a missing or extra parameter or a non-finite value; shape_error
  ///         for a buffer of the wrong size.
  void load_state(const std::vector<slot_state<T>>& saved) {
    slots_.load(parameters_, saved, "vera::optim::sgd::load_state");
    steps_ = static_cast<std::size_t>(slots_.max_count());
  }

  /// \brief Changes the learning rate (for schedules); throws value_error when not finite or < 0.
  void set_lr(double lr) {
    detail::check_lr("vera::optim::sgd", lr);
    options_.lr = lr;
  }
  /// \brief The current settings (lr as last set by set_lr).
  const sgd_options& options() const noexcept { return options_; }
  /// \brief The registered parameters.
  const parameter_list<T>& parameters() const noexcept { return parameters_; }
  /// \brief Steps taken (after load_state: the most steps any parameter took).
  std::size_t steps() const noexcept { return steps_; }

 private:
  sgd_options options_;
  parameter_list<T> parameters_;
  slot_store<T> slots_;
  std::size_t steps_ = 0;
};

}  // namespace vera::optim
