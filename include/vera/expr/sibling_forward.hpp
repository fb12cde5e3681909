// SPDX-License-Identifier: Apache-2.0
// Lazy forward of a sibling group: Y_i = X W_i^T + bias_i + adapter term_i, with P = X A^T once.
#pragma once

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "vera/adapter/context.hpp"
#include "vera/adapter/sibling_context.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/cost.hpp"
#include "vera/expr/operand.hpp"
#include "vera/expr/settings.hpp"
#include "vera/expr/sibling_group.hpp"

namespace vera {

namespace detail {

template <class D>
inline constexpr bool is_resizable = std::is_base_of_v<Eigen::PlainObjectBase<std::decay_t<D>>, std::decay_t<D>>;

// Checks every destination of a group evaluation before any is written: none may overlap an
// operand or another destination, and each must have (or, if resizable and overwritten, get)
// the shape of its result. Resizes only after every check has passed.
template <class Check, class Cols, class... Dst>
void prepare_destinations(const char* operation, bool may_resize, Check&& check_operands, index rows,
                          Cols cols, Dst&... dst) {
  constexpr std::size_t n = sizeof...(Dst);
  auto all = std::forward_as_tuple(dst...);
  for_each_index<n>([&](auto i) {
    constexpr std::size_t I = decltype(i)::value;
    const auto& d = std::get<I>(all);
    check_operands(d);
    for_each_index<n>([&](auto j) {
      constexpr std::size_t J = decltype(j)::value;
      if constexpr (J != I) {
        check_no_alias_named(operation, d, [] { return "destination " + std::to_string(J); }, std::get<J>(all));
      }
    });
    const bool fits = d.rows() == rows && d.cols() == cols(i);
    if (!fits && !(may_resize && is_resizable<decltype(d)>)) {
      vera::detail::check_shape(("destination " + std::to_string(I)).c_str(), rows, cols(i), d.rows(), d.cols());
    }
  });
  for_each_index<n>([&](auto i) {
    auto& d = std::get<decltype(i)::value>(all);
    if constexpr (is_resizable<decltype(d)>) {
      if (may_resize) d.resize(rows, cols(i));
    }
  });
}


/// \brief Y_i (n x out_i) = X W_i^T + bias_i + ((P Λd_i) B_i^T) Λb_i for every sibling, with
///        P = drop(X) A^T computed once for the group, lazily.
///
/// `.eval_to(Y_0, ..., Y_{N-1})` overwrites (resizing plain matrices), `.add_to(...)`
/// accumulates. `.train(ctx)` keeps P and the dropout key in ONE forward_context for the whole
/// group (one mask for all siblings), which the group backward and the single-adapter backward
/// of any sibling both read. Each sibling's order comes from the cost model, with P charged once;
/// `.with_order()` forces one order on every sibling.
template <class Exec, class XD, class Group>
class sibling_forward_expr : public detail::uses_workspace<detail::sibling_forward_expr<Exec, XD, Group>, typename Group::scalar>,
                             public detail::takes_order<detail::sibling_forward_expr<Exec, XD, Group>> {
  using T = typename Group::scalar;
  static_assert(std::is_same_v<typename XD::Scalar, typename Group::storage>,
                "vera::forward: X must have the scalar type of the siblings' W0");

 public:
  /// \brief Checks X against the group and keeps the operands; see vera::forward(X, group).
  /// \throws shape_error when X does not have the siblings' in_features columns.
  sibling_forward_expr(const XD& x, const Group& group) : x_(x), group_(group) {
    vera::detail::check_cols("X", group.in_features(), x.cols(), "the siblings' in_features");
  }

  /// \brief Training forward: dropout on, P saved in `ctx` (one context per group, reused).
  sibling_forward_expr train(forward_context<T>& ctx) const {
    sibling_forward_expr copy(*this);
    copy.context_ = &ctx;
    copy.sibling_context_ = nullptr;  // the last train() call decides which context is filled
    return copy;
  }
  /// \brief Training forward that also keeps each sibling's Q_i = (P Λd_i) B_i^T in `ctx`, for
  ///        vera::backward(group, ctx, G...). Runs every sibling in the low-rank order.
  sibling_forward_expr train(sibling_context<T>& ctx) const {
    sibling_forward_expr copy(*this);
    copy.context_ = nullptr;
    copy.sibling_context_ = &ctx;
    return copy;
  }

  /// \brief Y_i = sibling i's output, one destination per sibling, in the group's order. A plain
  ///        matrix of another shape is resized to n x out_i; any other destination must fit.
  ///        Their number and scalar type are checked at compile time.
  /// \throws shape_error when a destination that cannot be resized is not n x out_i;
  ///         aliasing_error when a destination overlaps X, a sibling's W0 or bias, or another
  ///         destination. Nothing is resized or written unless every destination passes.
  template <class... Dst>
  void eval_to(Dst&&... ys) const {
    run(assign_mode::overwrite, ys...);
  }
  /// \brief Y_i += sibling i's output; each Y_i must already be n x out_i.
  /// \throws shape_error when a Y_i is not n x out_i; aliasing_error as eval_to.
  template <class... Dst>
  void add_to(Dst&&... ys) const {
    run(assign_mode::accumulate, ys...);
  }

  /// \brief X, n x in (as held: by reference or by value, see the aliasing rule).
  const detail::closure_t<XD>& x() const noexcept { return x_; }
  /// \brief The sibling group.
  const Group& group() const noexcept { return group_; }
  /// \brief The forward_context set by train(forward_context&), or null.
  forward_context<T>* context() const noexcept { return context_; }
  /// \brief The sibling_context set by train(sibling_context&), or null.
  sibling_context<T>* kept_context() const noexcept { return sibling_context_; }

 private:
  template <class... Dst>
  void run(assign_mode mode, Dst&... ys) const {
    static_assert(sizeof...(Dst) == Group::size, "vera::forward (siblings): one destination per sibling");
    static_assert((detail::result_fits<std::decay_t<Dst>, XD, T> && ...),
                  "vera::forward (siblings): destinations must have the siblings' scalar type (float or "
                  "bfloat16 for bfloat16 storage)");
    const auto check_operands = [&](const auto& y) {
      vera::detail::check_no_alias("vera::forward (siblings)", y, "X", x_);
      detail::for_each_index<Group::size>([&](auto j) {
        const auto& member = group_.template member<decltype(j)::value>();
        detail::check_no_alias_named("vera::forward (siblings)", y, [&] { return detail::sibling_operand(j, "W0"); },
                                     member.w0());
        if constexpr (!std::is_same_v<typename std::decay_t<decltype(member)>::bias_type, no_bias_t>) {
          detail::check_no_alias_named("vera::forward (siblings)", y,
                                       [&] { return detail::sibling_operand(j, "bias"); }, member.bias());
        }
      });
    };
    const auto out_features = [&](auto i) {
      return group_.template member<decltype(i)::value>().layer().out_features();
    };
    detail::prepare_destinations("vera::forward (siblings)", mode == assign_mode::overwrite, check_operands,
                                 x_.rows(), out_features, ys...);
    evaluate(Exec{}, *this, std::forward_as_tuple(ys...), mode);
  }

  detail::closure_t<XD> x_;
  Group group_;
  forward_context<T>* context_ = nullptr;
  sibling_context<T>* sibling_context_ = nullptr;
};

}  // namespace detail

/// \brief Lazy forward of every sibling of `group` on X (n x in) on policy `Exec`.
///
/// Shapes: X n x in (the siblings' in_features); the results are Y_i n x out_i, one per
/// sibling in the group's order. X must have the siblings' scalar type (checked at compile time).
/// \throws shape_error naming X when its columns are not in (when the expression is built).
template <class Exec, class XD, class... Layers, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::sibling_forward_expr<Exec, XD, detail::sibling_group<Layers...>> forward(Exec, const Eigen::MatrixBase<XD>& x,
                                                                 const detail::sibling_group<Layers...>& group) {
  return {x.derived(), group};
}
/// \brief Lazy forward of every sibling of `group` on X (n x in) on the default (CPU) policy;
///        as the overload above.
template <class XD, class... Layers>
detail::sibling_forward_expr<exec::default_policy, XD, detail::sibling_group<Layers...>> forward(
    const Eigen::MatrixBase<XD>& x, const detail::sibling_group<Layers...>& group) {
  return {x.derived(), group};
}

}  // namespace vera
