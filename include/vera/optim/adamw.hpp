// SPDX-License-Identifier: Apache-2.0
// AdamW: Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch's AdamW rules).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <utility>
#include <vector>

#include "vera/optim/parameters.hpp"

namespace vera::optim {

/// \brief Settings of adamw; the defaults are PyTorch's.
struct adamw_options {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  /// Decoupled: p *= 1 - lr * weight_decay before the Adam step, for parameters with decay.
  double weight_decay = 1e-2;
};

/// \brief AdamW over registered buffers. At step t (from 1), per element with gradient g:
///        p *= 1 - lr * wd (decay only); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²;
///        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
///
/// Moment buffers are allocated on the first step, so steady-state steps allocate nothing. A step
/// first checks every gradient (finite) and parameter (not locked) and throws before changing
/// anything.
template <class T>
class adamw {
 public:
  explicit adamw(const adamw_options& options = {}) : options_(options) { validate(options_); }

  /// \brief Registers buffers; see parameter_list::add for the overloads and their checks.
  template <class... Args>
  void add(Args&&... args) {
    parameters_.add(std::forward<Args>(args)...);
  }

  void step() {
    parameters_.check_step("vera::optim::adamw::step");
    const auto& items = parameters_.items();
    // Parameters registered since the last step start from zero moments and their own t = 1,
    // as in PyTorch, where the step count is per parameter.
    const std::size_t known = first_.size();
    first_.resize(items.size());
    second_.resize(items.size());
    counts_.resize(items.size(), 0);
    for (std::size_t k = known; k < items.size(); ++k) {
      first_[k].assign(items[k].size, T(0));
      second_[k].assign(items[k].size, T(0));
    }
    ++steps_;
    const T b1 = static_cast<T>(options_.beta1);
    const T b2 = static_cast<T>(options_.beta2);
    const T eps = static_cast<T>(options_.eps);
    const T shrink = static_cast<T>(1.0 - options_.lr * options_.weight_decay);
    for (std::size_t k = 0; k < items.size(); ++k) {
      const parameter<T>& p = items[k];
      const double t = static_cast<double>(++counts_[k]);
      const T step_size = static_cast<T>(options_.lr / (1.0 - std::pow(options_.beta1, t)));
      const T root_correction2 = static_cast<T>(std::sqrt(1.0 - std::pow(options_.beta2, t)));
      const bool decay = p.decay && options_.weight_decay != 0.0;
      T* m = first_[k].data();
      T* v = second_[k].data();
      for (index i = 0; i < p.size; ++i) {
        const T g = p.gradient[i];
        if (decay) p.value[i] *= shrink;
        m[i] = b1 * m[i] + (T(1) - b1) * g;
        v[i] = b2 * v[i] + (T(1) - b2) * g * g;
        p.value[i] -= step_size * m[i] / (std::sqrt(v[i]) / root_correction2 + eps);
      }
    }
  }

  /// \brief Per-parameter step counts and moments, for a checkpoint.
  std::vector<slot_state<T>> state() const {
    std::vector<slot_state<T>> out;
    const auto& items = parameters_.items();
    for (std::size_t k = 0; k < items.size(); ++k) {
      slot_state<T> s;
      s.parameter = items[k].name;
      if (k < counts_.size() && counts_[k] > 0) {
        s.steps = counts_[k];
        s.first = first_[k];
        s.second = second_[k];
      }
      out.push_back(std::move(s));
    }
    return out;
  }

  /// \brief Restores what state() returned (parameters matched by name, in any order), so that
  ///        training resumes exactly. Checks everything first (see parameter_list::match_state);
  ///        on error the optimizer is unchanged.
  void load_state(const std::vector<slot_state<T>>& saved) {
    const auto order =
        parameters_.match_state("vera::optim::adamw::load_state", saved, true, true);
    const auto& items = parameters_.items();
    std::vector<std::vector<T>> first(items.size()), second(items.size());
    std::vector<std::uint64_t> counts(items.size(), 0);
    for (std::size_t k = 0; k < items.size(); ++k) {
      const slot_state<T>& s = saved[order[k]];
      counts[k] = s.steps;
      first[k] = s.steps > 0 ? s.first : std::vector<T>(static_cast<std::size_t>(items[k].size), T(0));
      second[k] = s.steps > 0 ? s.second : std::vector<T>(static_cast<std::size_t>(items[k].size), T(0));
    }
    first_ = std::move(first);
    second_ = std::move(second);
    counts_ = std::move(counts);
    steps_ = counts_.empty() ? 0 : static_cast<std::size_t>(*std::max_element(counts_.begin(), counts_.end()));
  }

  /// \brief Changes the learning rate (for schedules); throws value_error when not finite or < 0.
  void set_lr(double lr) {
    detail::check_rate("vera::optim::adamw", "lr", lr, 0.0, true, HUGE_VAL, false);
    options_.lr = lr;
  }
  const adamw_options& options() const noexcept { return options_; }
  const parameter_list<T>& parameters() const noexcept { return parameters_; }
  std::size_t steps() const noexcept { return steps_; }

 private:
  static void validate(const adamw_options& o) {
    const char* who = "vera::optim::adamw";
    detail::check_rate(who, "lr", o.lr, 0.0, true, HUGE_VAL, false);
    detail::check_rate(who, "beta1", o.beta1, 0.0, true, 1.0, false);
    detail::check_rate(who, "beta2", o.beta2, 0.0, true, 1.0, false);
    detail::check_rate(who, "eps", o.eps, 0.0, false, HUGE_VAL, false);
    detail::check_rate(who, "weight_decay", o.weight_decay, 0.0, true, HUGE_VAL, false);
  }

  adamw_options options_;
  parameter_list<T> parameters_;
  std::vector<std::vector<T>> first_;
  std::vector<std::vector<T>> second_;
  std::vector<std::uint64_t> counts_;
  std::size_t steps_ = 0;
};

}  // namespace vera::optim
