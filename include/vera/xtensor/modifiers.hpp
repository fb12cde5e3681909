// SPDX-License-Identifier: Apache-2.0
// The modifiers of the xtensor expressions, taken from the Eigen front-end's expressions they
// evaluate through: one set of modifiers for both front-ends.
#pragma once

#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "vera/core/shape.hpp"
#include "vera/expr/cost.hpp"
#include "vera/xtensor/result.hpp"

namespace vera::xt::detail {

template <class E, class = void>
struct has_train : std::false_type {};
template <class E>
struct has_train<E, std::void_t<decltype(std::declval<const E&>().train(
                        *std::declval<const E&>().context()))>> : std::true_type {};
template <class E, class = void>
struct has_order : std::false_type {};
template <class E>
struct has_order<E, std::void_t<decltype(std::declval<const E&>().with_order(
                        std::declval<const E&>().requested_order()))>> : std::true_type {};

/// Base of the xtensor expressions. `Checked` is the Eigen front-end's expression of the same
/// kind over the operands' extents: building it validates the operands, and it carries the
/// settings. The base offers exactly the modifiers `Checked` has (`.train(ctx)`,
/// `.using_workspace(ws)`, `.with_order(o)`), each returning a `Derived` whose `Checked` has
/// that setting; at evaluation, with_settings() passes them to the expression over the mapped
/// operands. `Derived` provides a constructor `(const Derived& operands, const Checked&)`.
template <class Derived, class Checked>
class modifiers_of {
 public:
  /// Training forward: dropout on, what backward needs saved in `ctx`.
  template <class Context, class C = Checked,
            class = decltype(std::declval<const C&>().train(std::declval<Context&>()))>
  Derived train(Context& ctx) const {
    return with(checked_.train(ctx));
  }
  /// Use `ws` for scratch memory instead of allocating.
  template <class Workspace, class C = Checked,
            class = decltype(std::declval<const C&>().using_workspace(std::declval<Workspace&>()))>
  Derived using_workspace(Workspace& ws) const {
    return with(checked_.using_workspace(ws));
  }
  /// Force an association order instead of the cost model's choice; as the Eigen front-end,
  /// dropout keeps the low-rank order whatever is requested.
  template <class C = Checked, class = decltype(std::declval<const C&>().with_order(order::automatic))>
  Derived with_order(order requested) const {
    return with(checked_.with_order(requested));
  }

 protected:
  explicit modifiers_of(const Checked& checked) : checked_(checked) {}

  /// The expression over the extents, with the settings.
  const Checked& checked() const noexcept { return checked_; }

  /// `e`, an expression of Checked's kind over the mapped operands, with Checked's settings.
  template <class Expr>
  Expr with_settings(const Expr& e) const {
    const auto ordered = [&](const Expr& x) -> Expr {
      if constexpr (has_order<Checked>::value) {
        return x.with_order(checked_.requested_order());
      } else {
        return x;
      }
    };
    const auto trained = [&](const Expr& x) -> Expr {
      if constexpr (has_train<Checked>::value) {
        return checked_.context() != nullptr ? x.train(*checked_.context()) : x;
      } else {
        return x;
      }
    };
    const Expr prepared = trained(ordered(e));
    return checked_.scratch() != nullptr ? prepared.using_workspace(*checked_.scratch()) : prepared;
  }

 private:
  Derived with(const Checked& checked) const {
    return Derived(static_cast<const Derived&>(*this), checked);
  }

  Checked checked_;
};

/// The scalar of the Eigen expression's result (its ReturnType): bfloat16 for bfloat16 operands.
template <class Checked>
using result_scalar_t = typename Eigen::internal::traits<Checked>::ReturnType::Scalar;

/// Base of the matrix-valued expressions that evaluate through a `Checked` expression of the
/// Eigen front-end: its modifiers, the evaluation of matrix_result (into `Checked`'s result
/// scalar, or `Also`), and the shape and accumulation both take from `Checked`. `Derived`
/// provides run() as matrix_result asks and the constructor modifiers_of asks for, and befriends
/// `evaluation`.
template <class Derived, class Checked, class Also = result_scalar_t<Checked>>
class checked_matrix_result : public matrix_result<Derived, result_scalar_t<Checked>, Also>,
                              public modifiers_of<Derived, Checked> {
 public:
  /// The base that calls Derived::run().
  using evaluation = matrix_result<Derived, result_scalar_t<Checked>, Also>;

  /// Rows of the result.
  index rows() const { return this->checked().rows(); }
  /// Columns of the result.
  index cols() const { return this->checked().cols(); }

  /// y += expr; y must already be rows() x cols() and dense row-major.
  /// \throws shape_error otherwise.
  template <class Y>
  void add_to(Y&& y) const {
    this->accumulate_into(y);
  }

 protected:
  explicit checked_matrix_result(const Checked& checked) : modifiers_of<Derived, Checked>(checked) {}
};

}  // namespace vera::xt::detail
