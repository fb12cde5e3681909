// SPDX-License-Identifier: Apache-2.0
// AdamW: Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch's AdamW rules).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "vera/core/optim_options.hpp"
#include "vera/optim/parameters.hpp"

namespace vera::optim {

/// \brief AdamW over registered buffers. At step t (from 1), per element with gradient g:
///        p *= 1 - lr * wd (decay only); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²;
///        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
///
/// Step counts are per parameter, as in PyTorch. Moment buffers are allocated on a parameter's
/// first step, so steady-state steps allocate nothing. A step first checks every gradient
/// (finite) and parameter (not locked) and throws before changing anything. Registration (add),
/// checkpoints (state, load_state; the moments are `first` and `second`), set_lr, options,
/// parameters and steps are those of every optimizer.
template <class T>
class adamw : public detail::optimizer_core<T, adamw_options> {
 public:
  /// \brief An optimizer with no parameters yet; register them with add().
  /// \throws value_error for an option out of range (named in the message).
  explicit adamw(const adamw_options& options = {})
      : detail::optimizer_core<T, adamw_options>(options, "vera::optim::adamw", true, true) {}

  /// \brief One AdamW step over every registered parameter.
  /// \throws state_error for a locked parameter (a merged vera::linear), value_error for a
  ///         non-finite gradient element; both before any value changes.
  void step() {
    const adamw_options& o = this->options_;
    this->parameters_.check_step("vera::optim::adamw::step");
    this->slots_.grow(this->parameters_);
    ++this->steps_;
    const T b1 = static_cast<T>(o.beta1);
    const T b2 = static_cast<T>(o.beta2);
    const T eps = static_cast<T>(o.eps);
    const T shrink = static_cast<T>(1.0 - o.lr * o.weight_decay);
    const auto& items = this->parameters_.items();
    for (std::size_t k = 0; k < items.size(); ++k) {
      const parameter<T>& p = items[k];
      const double t = static_cast<double>(++this->slots_.count(k));
      const T step_size = static_cast<T>(o.lr / (1.0 - std::pow(o.beta1, t)));
      const T root_correction2 = static_cast<T>(std::sqrt(1.0 - std::pow(o.beta2, t)));
      const bool decay = p.decay && o.weight_decay != 0.0;
      T* m = this->slots_.first(k);
      T* v = this->slots_.second(k);
      for (index i = 0; i < p.size; ++i) {
        const T g = p.gradient[i];
        if (decay) p.value[i] *= shrink;
        m[i] = b1 * m[i] + (T(1) - b1) * g;
        v[i] = b2 * v[i] + (T(1) - b2) * g * g;
        p.value[i] -= step_size * m[i] / (std::sqrt(v[i]) / root_correction2 + eps);
      }
    }
  }
};

}  // namespace vera::optim
