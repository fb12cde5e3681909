// SPDX-License-Identifier: Apache-2.0
// Stochastic gradient descent with momentum, Nesterov and L2 weight decay (PyTorch's SGD rules).
#pragma once

#include <cstdint>
#include <cstddef>

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
/// changing anything. Registration (add), checkpoints (state, load_state; the momentum buffers
/// are `first`), set_lr, options, parameters and steps are those of every optimizer.
template <class T>
class sgd : public detail::optimizer_core<T, sgd_options> {
 public:
  /// \brief An optimizer with no parameters yet; register them with add().
  /// \throws value_error for an option out of range (named in the message).
  explicit sgd(const sgd_options& options = {})
      : detail::optimizer_core<T, sgd_options>(options, "vera::optim::sgd", options.momentum != 0.0, false) {}

  /// \brief One SGD step over every registered parameter.
  /// \throws state_error for a locked parameter (a merged vera::linear), value_error for a
  ///         non-finite gradient element; both before any value changes.
  void step() {
    const sgd_options& o = this->options_;
    this->parameters_.check_step("vera::optim::sgd::step");
    this->slots_.grow(this->parameters_);
    const T lr = static_cast<T>(o.lr);
    const T mu = static_cast<T>(o.momentum);
    const T damp = static_cast<T>(1.0 - o.dampening);
    const T wd = static_cast<T>(o.weight_decay);
    const auto& items = this->parameters_.items();
    for (std::size_t k = 0; k < items.size(); ++k) {
      const parameter<T>& p = items[k];
      const bool decay = p.decay && o.weight_decay != 0.0;
      T* buf = o.momentum != 0.0 ? this->slots_.first(k) : nullptr;
      const bool first = this->slots_.count(k) == 0;  // torch: "buf is None"
      for (index i = 0; i < p.size; ++i) {
        T g = p.gradient[i];
        if (decay) g += wd * p.value[i];
        if (buf != nullptr) {
          buf[i] = first ? g : mu * buf[i] + damp * g;
          g = o.nesterov ? g + mu * buf[i] : buf[i];
        }
        p.value[i] -= lr * g;
      }
      ++this->slots_.count(k);
    }
    ++this->steps_;
  }
};

}  // namespace vera::optim
