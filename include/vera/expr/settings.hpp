// SPDX-License-Identifier: Apache-2.0
// The one mechanism behind every expression modifier (`.using_workspace()`, `.train()`,
// `.with_order()` here; `.on()` and the device workspace in <vera/cuda.hpp>): a setting is a
// value the expression carries, and a modifier returns a copy with that value replaced. Free of
// Eigen, so that the device expressions share it.
#pragma once

#include "vera/expr/cost.hpp"

namespace vera {

template <class T>
class workspace;

namespace detail {

/// One value an expression `Derived` carries from modifier to modifier. `Tag` tells settings of
/// the same value type apart; a modifier base derives from one setting and offers it by name.
template <class Derived, class Tag, class Value>
class setting {
 protected:
  /// A copy of the expression with this setting replaced by `value`.
  Derived with_setting(Value value) const {
    Derived copy(static_cast<const Derived&>(*this));
    static_cast<setting&>(copy).value_ = value;
    return copy;
  }
  /// The value set last (value-initialised until then).
  const Value& setting_value() const noexcept { return value_; }

 private:
  Value value_{};
};

struct workspace_setting;
struct context_setting;
struct order_setting;


/// \brief Base of the lazy expressions that can evaluate in a caller's workspace: adds
///        `.using_workspace(ws)`, which returns a copy of the expression `Derived` that uses `ws`
///        (a vera::workspace<T>, or the workspace type `Workspace` its evaluator needs).
template <class Derived, class T, class Workspace = workspace<T>>
class uses_workspace : public detail::setting<Derived, detail::workspace_setting, Workspace*> {
 public:
  /// \brief Use `ws` for scratch memory instead of allocating.
  Derived using_workspace(Workspace& ws) const { return this->with_setting(&ws); }
  /// \brief The workspace set by using_workspace(), or null.
  Workspace* scratch() const noexcept { return this->setting_value(); }
};

/// \brief Base of the lazy forwards that have a training form: adds `.train(ctx)`, which returns a
///        copy of the expression `Derived` that applies dropout to the adapter input and saves
///        what backward needs in `ctx` (one context per layer, reused from step to step).
template <class Derived, class Context>
class trains : public detail::setting<Derived, detail::context_setting, Context*> {
 public:
  /// \brief The training forward, filling `ctx`.
  Derived train(Context& ctx) const { return this->with_setting(&ctx); }
  /// \brief The context set by train(), or null for an inference forward.
  Context* context() const noexcept { return this->setting_value(); }
};

/// \brief Base of the lazy expressions whose association order can be forced: adds
///        `.with_order(o)`, which returns a copy of the expression `Derived` that runs `o`.
///
/// A forced order applies where it is valid: a forward with dropout on the adapter's input (and
/// a sibling forward that keeps Q_i), and the input gradient after such a forward, run the
/// low-rank order whatever is requested, since a merged weight cannot express a mask that only
/// the adapter's term sees.
template <class Derived>
class takes_order : public detail::setting<Derived, detail::order_setting, order> {
 public:
  /// \brief Force an association order instead of the cost model's choice.
  Derived with_order(order requested) const { return this->with_setting(requested); }
  /// \brief The order set by with_order() (order::automatic by default).
  order requested_order() const noexcept { return this->setting_value(); }
};

}  // namespace detail

}  // namespace vera
