// SPDX-License-Identifier: Apache-2.0
// What every lazy expression can be told before it is evaluated: a caller's workspace, a forced
// association order and a training context, each added by one base class. Free of Eigen, so that the device
// expressions of <vera/cuda.hpp> share takes_order.
#pragma once

#include "vera/expr/cost.hpp"

namespace vera {

template <class T>
class workspace;

/// \brief Base of the lazy expressions that can evaluate in a caller's workspace: adds
///        `.using_workspace(ws)`, which returns a copy of the expression `Derived` that uses `ws`
///        (a vera::workspace<T>, or the workspace type `Workspace` its evaluator needs).
template <class Derived, class T, class Workspace = workspace<T>>
class uses_workspace {
 public:
  /// \brief Use `ws` for scratch memory instead of allocating.
  Derived using_workspace(Workspace& ws) const {
    Derived copy(static_cast<const Derived&>(*this));
    static_cast<uses_workspace&>(copy).workspace_ = &ws;
    return copy;
  }
  /// \brief The workspace set by using_workspace(), or null.
  Workspace* scratch() const noexcept { return workspace_; }

 private:
  Workspace* workspace_ = nullptr;
};

/// \brief Base of the lazy forwards that have a training form: adds `.train(ctx)`, which returns a
///        copy of the expression `Derived` that applies dropout to the adapter input and saves
///        what backward needs in `ctx` (one context per layer, reused from step to step).
template <class Derived, class Context>
class trains {
 public:
  /// \brief The training forward, filling `ctx`.
  Derived train(Context& ctx) const {
    Derived copy(static_cast<const Derived&>(*this));
    static_cast<trains&>(copy).context_ = &ctx;
    return copy;
  }
  /// \brief The context set by train(), or null for an inference forward.
  Context* context() const noexcept { return context_; }

 private:
  Context* context_ = nullptr;
};

/// \brief Base of the lazy expressions whose association order can be forced: adds
///        `.with_order(o)`, which returns a copy of the expression `Derived` that runs `o`.
///
/// A forced order applies where it is valid: a forward with dropout on the adapter's input (and
/// a sibling forward that keeps Q_i), and the input gradient after such a forward, run the
/// low-rank order whatever is requested, since a merged weight cannot express a mask that only
/// the adapter's term sees.
template <class Derived>
class takes_order {
 public:
  /// \brief Force an association order instead of the cost model's choice.
  Derived with_order(order requested) const {
    Derived copy(static_cast<const Derived&>(*this));
    static_cast<takes_order&>(copy).order_ = requested;
    return copy;
  }
  /// \brief The order set by with_order() (order::automatic by default).
  order requested_order() const noexcept { return order_; }

 private:
  order order_ = order::automatic;
};

}  // namespace vera
