// SPDX-License-Identifier: Apache-2.0
// Stochastic gradient descent with momentum, Nesterov and L2 weight decay (PyTorch's SGD rules).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <utility>
#include <vector>

#include "vera/optim/parameters.hpp"

namespace vera::optim {

/// \brief Settings of sgd; the defaults are plain SGD at lr 0.01.
struct sgd_options {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  /// L2 penalty added to the gradient (coupled, as PyTorch's SGD), for parameters with decay.
  double weight_decay = 0.0;
  bool nesterov = false;
};

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
  explicit sgd(const sgd_options& options = {}) : options_(options) { validate(options_); }

  /// \brief Registers buffers; see parameter_list::add for the overloads and their checks.
  template <class... Args>
  void add(Args&&... args) {
    parameters_.add(std::forward<Args>(args)...);
  }

  void step() {
    parameters_.check_step("vera::optim::sgd::step");
    const auto& items = parameters_.items();
    // Parameters registered since the last step get their buffer now (torch: "buf is None").
    const std::size_t known = momentum_.size();
    momentum_.resize(items.size());
    counts_.resize(items.size(), 0);
    for (std::size_t k = known; k < items.size(); ++k) {
      if (options_.momentum != 0.0) momentum_[k].assign(items[k].size, T(0));
    }
    const T lr = static_cast<T>(options_.lr);
    const T mu = static_cast<T>(options_.momentum);
    const T damp = static_cast<T>(1.0 - options_.dampening);
    const T wd = static_cast<T>(options_.weight_decay);
    for (std::size_t k = 0; k < items.size(); ++k) {
      const parameter<T>& p = items[k];
      const bool decay = p.decay && options_.weight_decay != 0.0;
      T* buf = options_.momentum != 0.0 ? momentum_[k].data() : nullptr;
      const bool first = counts_[k] == 0;
      for (index i = 0; i < p.size; ++i) {
        T g = p.gradient[i];
        if (decay) g += wd * p.value[i];
        if (buf != nullptr) {
          buf[i] = first ? g : mu * buf[i] + damp * g;
          g = options_.nesterov ? g + mu * buf[i] : buf[i];
        }
        p.value[i] -= lr * g;
      }
      ++counts_[k];
    }
    ++steps_;
  }

  /// \brief Per-parameter step counts and momentum buffers (in `first`), for a checkpoint.
  std::vector<slot_state<T>> state() const {
    std::vector<slot_state<T>> out;
    const auto& items = parameters_.items();
    for (std::size_t k = 0; k < items.size(); ++k) {
      slot_state<T> s;
      s.parameter = items[k].name;
      if (k < counts_.size() && counts_[k] > 0) {
        s.steps = counts_[k];
        if (options_.momentum != 0.0) s.first = momentum_[k];
      }
      out.push_back(std::move(s));
    }
    return out;
  }

  /// \brief Restores what state() returned (parameters matched by name, in any order). Checks
  ///        everything first; on error the optimizer is unchanged.
  void load_state(const std::vector<slot_state<T>>& saved) {
    const bool uses_momentum = options_.momentum != 0.0;
    const auto order =
        parameters_.match_state("vera::optim::sgd::load_state", saved, uses_momentum, false);
    const auto& items = parameters_.items();
    std::vector<std::vector<T>> momentum(items.size());
    std::vector<std::uint64_t> counts(items.size(), 0);
    for (std::size_t k = 0; k < items.size(); ++k) {
      const slot_state<T>& s = saved[order[k]];
      counts[k] = s.steps;
      if (uses_momentum) {
        momentum[k] = s.steps > 0 ? s.first : std::vector<T>(static_cast<std::size_t>(items[k].size), T(0));
      }
    }
    momentum_ = std::move(momentum);
    counts_ = std::move(counts);
    steps_ = counts_.empty() ? 0 : static_cast<std::size_t>(*std::max_element(counts_.begin(), counts_.end()));
  }

  /// \brief Changes the learning rate (for schedules); throws value_error when not finite or < 0.
  void set_lr(double lr) {
    detail::check_rate("vera::optim::sgd", "lr", lr, 0.0, true, HUGE_VAL, false);
    options_.lr = lr;
  }
  const sgd_options& options() const noexcept { return options_; }
  const parameter_list<T>& parameters() const noexcept { return parameters_; }
  std::size_t steps() const noexcept { return steps_; }

 private:
  static void validate(const sgd_options& o) {
    const char* who = "vera::optim::sgd";
    detail::check_rate(who, "lr", o.lr, 0.0, true, HUGE_VAL, false);
    detail::check_rate(who, "momentum", o.momentum, 0.0, true, HUGE_VAL, false);
    detail::check_rate(who, "dampening", o.dampening, 0.0, true, 1.0, true);
    detail::check_rate(who, "weight_decay", o.weight_decay, 0.0, true, HUGE_VAL, false);
    if (o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0)) {
      throw value_error("vera::optim::sgd: nesterov needs momentum > 0 and dampening 0");
    }
  }

  sgd_options options_;
  parameter_list<T> parameters_;
  std::vector<std::vector<T>> momentum_;
  std::vector<std::uint64_t> counts_;
  std::size_t steps_ = 0;
};

}  // namespace vera::optim
