// SPDX-License-Identifier: Apache-2.0
// Lazy backward of a sibling group: each sibling's grad_b, grad_d, and one grad_X for the group.
#pragma once

#include <string>
#include <tuple>
#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/context.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/adapter/sibling_context.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/assignable.hpp"
#include "vera/expr/backward.hpp"
#include "vera/expr/cost.hpp"
#include "vera/expr/operand.hpp"
#include "vera/expr/settings.hpp"
#include "vera/expr/sibling_forward.hpp"
#include "vera/expr/sibling_group.hpp"

namespace vera {

namespace detail {

template <class Exec, class Group, class... GD>
class sibling_input_gradient_expr;

}  // namespace detail

}  // namespace vera

namespace Eigen::internal {
template <class Exec, class Group, class... GD>
struct traits<vera::detail::sibling_input_gradient_expr<Exec, Group, GD...>> {
  using ReturnType = Eigen::Matrix<typename Group::storage, Eigen::Dynamic, Eigen::Dynamic>;
};
}  // namespace Eigen::internal

namespace vera {

namespace detail {

// The group's upstream gradients against the context of its training forward: G_i is
// n x out_i, with n the forward's rows, and the context holds the group's rank.
template <class Group, class T, class... GD>
void check_sibling_upstream(const Group& group, const forward_context<T>& ctx, const GD&... g) {
  static_assert(sizeof...(GD) == Group::size, "vera siblings backward: one upstream gradient G per sibling");
  static_assert((std::is_same_v<typename GD::Scalar, typename Group::storage> && ...),
                "vera siblings backward: G must have the scalar type of the siblings' W0");
  if (!ctx.ready()) {
    throw state_error("vera siblings backward: the forward context holds no training forward; evaluate "
                      "vera::forward(X, group).train(ctx) first");
  }
  if (ctx.projected().cols() != group.rank()) {
    throw rank_error("forward context: holds rank " + std::to_string(ctx.projected().cols()) +
                     ", the siblings have rank " + std::to_string(group.rank()));
  }
  const auto gs = std::forward_as_tuple(g...);
  for_each_index<Group::size>([&](auto i) {
    const auto& gi = std::get<decltype(i)::value>(gs);
    const adapter<T>& ad = group.template member<decltype(i)::value>().layer();
    if (gi.cols() != ad.out_features()) {
      vera::detail::check_cols(sibling_operand(i, "G").c_str(), ad.out_features(), gi.cols(), "its out_features");
    }
    if (gi.rows() != ctx.rows()) {
      vera::detail::check_rows(sibling_operand(i, "G").c_str(), ctx.rows(), gi.rows(), "rows of the training forward");
    }
  });
}

// dX must not overlap any sibling's G_i or W0: both are read after dX is first written.
template <class Group, class DX, class Upstream>
void check_dx_against_siblings(const char* operation, const Group& group, const DX& dx, const Upstream& upstream) {
  for_each_index<Group::size>([&](auto i) {
    constexpr std::size_t I = decltype(i)::value;
    check_no_alias_named(operation, dx, [] { return sibling_operand(I, "G"); }, std::get<I>(upstream));
    check_no_alias_named(operation, dx, [] { return sibling_operand(I, "W0"); }, group.template member<I>().w0());
  });
}

// One vera::gradients object per sibling: the same object passed for two siblings would end up
// holding one sibling's gradients (or, accumulating, their sum) with no sign of it.
template <class... Out>
void check_distinct_gradients(const char* operation, const Out&... out) {
  const void* const addresses[] = {static_cast<const void*>(&out)...};
  for (std::size_t i = 0; i < sizeof...(Out); ++i) {
    for (std::size_t j = i + 1; j < sizeof...(Out); ++j) {
      if (addresses[i] == addresses[j]) {
        throw aliasing_error(std::string(operation) + ": " + sibling_operand(i, "gradients") + " and " +
                             sibling_operand(j, "gradients") +
                             " are the same vera::gradients object; pass one object per sibling");
      }
    }
  }
}


/// \brief Each sibling's dL/d lambda_b and dL/d lambda_d from its G_i = dL/dY_i and the group's
///        context, lazily: the single-adapter gradients of every sibling (same P, same numbers).
///
/// `.eval_to(g_0, ..., g_{N-1})` overwrites, `.add_to(...)` accumulates, one vera::gradients<T>
/// per sibling. Every buffer is checked before any is written.
template <class Exec, class Group, class... GD>
class sibling_parameter_gradient_expr
    : public detail::uses_workspace<detail::sibling_parameter_gradient_expr<Exec, Group, GD...>, typename Group::scalar> {
  using T = typename Group::scalar;

 public:
  /// \brief Checks every G_i against its sibling and the context; see vera::parameter_gradients.
  /// \throws state_error when ctx holds no training forward; rank_error when ctx was filled at
  ///         another rank; shape_error when a G_i is not n x out_i (n: rows of that forward).
  sibling_parameter_gradient_expr(const Group& group, const forward_context<T>& ctx, const GD&... g)
      : group_(group), context_(&ctx), upstream_(g...) {
    detail::check_sibling_upstream(group, ctx, g...);
  }

  /// \brief Writes sibling i's gradients into `out_i`, one vera::gradients<T> per sibling in the
  ///        group's order (checked at compile time). Empty buffers are sized (out_i, rank);
  ///        a frozen vector (train_b / train_d false) gets zero.
  /// \throws shape_error naming the sibling when a non-empty buffer is not sized (out_i, rank);
  ///         aliasing_error when one object is passed for two siblings.
  template <class... Out>
  void eval_to(Out&... out) const {
    run(assign_mode::overwrite, out...);
  }
  /// \brief Adds sibling i's gradients to `out_i`; a frozen vector is left as is.
  /// \throws shape_error naming the sibling when a buffer is not sized (out_i, rank);
  ///         aliasing_error when one object is passed for two siblings.
  template <class... Out>
  void add_to(Out&... out) const {
    run(assign_mode::accumulate, out...);
  }

 private:
  template <class... Out>
  void run(assign_mode mode, Out&... out) const {
    static_assert(sizeof...(Out) == Group::size, "vera siblings parameter gradients: one gradients<T> per sibling");
    static_assert((std::is_same_v<Out, gradients<T>> && ...),
                  "vera siblings parameter gradients: destinations must be vera::gradients<T>");
    detail::check_distinct_gradients("vera::parameter_gradients (siblings)", out...);
    auto outs = std::forward_as_tuple(out...);
    bool sizing[Group::size];
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      sizing[I] = detail::gradient_buffers_need_sizing(std::get<I>(outs), group_.template member<I>().layer(), mode,
                                                       [] { return detail::sibling_operand(I, "gradients"); });
    });
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      const adapter<T>& ad = group_.template member<I>().layer();
      gradients<T>& target = std::get<I>(outs);
      if (sizing[I]) {
        target.lambda_b.resize(ad.out_features());
        target.lambda_d.resize(ad.rank());
      }
      // The single-adapter expression over the shared P: the group adds nothing to this part.
      const auto single = parameter_gradients(Exec{}, std::get<I>(upstream_), ad, *context_);
      if (workspace<T>* ws = this->scratch(); ws != nullptr) {
        single.using_workspace(*ws).eval_to(target, mode);
      } else {
        single.eval_to(target, mode);
      }
    });
  }

  Group group_;
  const forward_context<T>* context_;
  std::tuple<detail::closure_t<GD>...> upstream_;
};

/// \brief dL/dX (n x in) = sum_i G_i W_i + mask ⊙ ((sum_i T_i Λd_i) A) / (1 - p), lazily, with
///        T_i = (G_i Λb_i) B_i: the adapter terms of all siblings meet in ONE GEMM against A.
///
/// `dX = expr;` overwrites, `expr.add_to(dX)` accumulates. Each sibling's order comes from the
/// cost model (the product against A charged once); `.with_order()` forces one for all.
template <class Exec, class Group, class... GD>
class sibling_input_gradient_expr
    : public detail::assignable<detail::sibling_input_gradient_expr<Exec, Group, GD...>, Exec>,
      public detail::uses_workspace<detail::sibling_input_gradient_expr<Exec, Group, GD...>, typename Group::scalar>,
      public detail::takes_order<detail::sibling_input_gradient_expr<Exec, Group, GD...>> {
  using T = typename Group::scalar;

 public:
  /// \brief Checks every G_i against its sibling and the context; see vera::input_gradient.
  /// \throws state_error when ctx holds no training forward; rank_error when ctx was filled at
  ///         another rank; shape_error when a G_i is not n x out_i (n: rows of that forward).
  sibling_input_gradient_expr(const Group& group, const forward_context<T>& ctx, const GD&... g)
      : group_(group), context_(&ctx), upstream_(g...) {
    detail::check_sibling_upstream(group, ctx, g...);
  }

  /// \brief n, the rows of every G_i.
  Eigen::Index rows() const { return std::get<0>(upstream_).rows(); }
  /// \brief in, the siblings' shared input features.
  Eigen::Index cols() const { return group_.in_features(); }

  /// \brief Checked by `dX = expr` and `expr.add_to(dX)` besides dX's shape (n x in).
  /// \throws aliasing_error when dX overlaps a G_i or a W0.
  template <class Dst>
  void check_destination(const Dst& dst) const {
    detail::check_dx_against_siblings("vera::input_gradient (siblings)", group_, dst, upstream_);
  }

  /// \brief The sibling group.
  const Group& group() const noexcept { return group_; }
  /// \brief The context of the group's training forward.
  const forward_context<T>& context() const noexcept { return *context_; }
  /// \brief G_i = dL/dY_i, n x out_i, one per sibling in the group's order.
  const std::tuple<detail::closure_t<GD>...>& upstream() const noexcept { return upstream_; }

 private:
  Group group_;
  const forward_context<T>* context_;
  std::tuple<detail::closure_t<GD>...> upstream_;
};

/// \brief Every sibling's dL/d lambda_b, dL/d lambda_d and the group's dL/dX in one pass, from
///        a forward that kept Q_i (`.train(sibling_context&)`), lazily:
///
///     grad_b_i = colsum(G_i ⊙ Q_i),  U_i = G_i Λb_i B_i,  grad_d_i = colsum(U_i ⊙ P),
///     dX = sum_i G_i W_i + mask ⊙ ((sum_i U_i Λd_i) A) / (1 - p).
///
/// Per sibling that is one out x n x rank GEMM (U_i) where parameter_gradients + input_gradient
/// need two (G_i^T P and G_i Λb_i B_i Λd_i). `.eval_to(dX, g_0, ..., g_{N-1})` overwrites (a
/// plain matrix dX is resized), `.add_to(...)` accumulates; everything is checked first.
template <class Exec, class Group, class... GD>
class sibling_backward_expr
    : public detail::uses_workspace<detail::sibling_backward_expr<Exec, Group, GD...>, typename Group::scalar> {
  using T = typename Group::scalar;

 public:
  /// \brief Checks the context and every G_i; see vera::backward(group, ctx, G...).
  /// \throws state_error when ctx holds no training forward; shape_error when ctx was filled by
  ///         a group of another size or of other out_i, or a G_i is not n x out_i (n: rows of
  ///         that forward); rank_error when ctx was filled at another rank.
  sibling_backward_expr(const Group& group, const sibling_context<T>& ctx, const GD&... g)
      : group_(group), context_(&ctx), upstream_(g...) {
    if (!ctx.ready()) {
      throw state_error("vera::backward (siblings): the sibling context holds no training forward; evaluate "
                        "vera::forward(X, group).train(sibling_ctx) first");
    }
    if (ctx.siblings() != Group::size) {
      throw shape_error("sibling context: holds " + std::to_string(ctx.siblings()) + " siblings, the group has " +
                        std::to_string(Group::size));
    }
    detail::check_sibling_upstream(group, ctx.projection(), g...);
    detail::for_each_index<Group::size>([&](auto i) {
      const adapter<T>& ad = group.template member<decltype(i)::value>().layer();
      if (ctx.kept(i).cols() != ad.out_features()) {
        vera::detail::check_cols(detail::sibling_operand(i, "Q in the sibling context").c_str(), ad.out_features(),
                   ctx.kept(i).cols(), "its out_features; the context was filled by another group");
      }
    });
  }

  /// \brief Overwrites dX (n x in; a plain matrix of another shape is resized) and sibling i's
  ///        gradients in `grads_i`, one vera::gradients<T> per sibling in the group's order
  ///        (checked at compile time). Empty buffers are sized (out_i, rank); a frozen vector
  ///        (train_b / train_d false) gets zero.
  /// \throws shape_error when dX cannot be resized and is not n x in, or a non-empty buffer is
  ///         not sized (out_i, rank); aliasing_error when dX overlaps a G_i or a W0, or one
  ///         gradients object is passed for two siblings. Nothing is resized or written unless
  ///         every check passes.
  template <class DX, class... Out>
  void eval_to(DX&& dx, Out&... grads) const {
    run(assign_mode::overwrite, dx, grads...);
  }
  /// \brief dX += the input gradient and grads_i += sibling i's gradients; dX must already be
  ///        n x in and each buffer sized (out_i, rank). A frozen vector is left as is.
  /// \throws shape_error when dX or a buffer has another shape; aliasing_error as eval_to.
  template <class DX, class... Out>
  void add_to(DX&& dx, Out&... grads) const {
    run(assign_mode::accumulate, dx, grads...);
  }

  /// \brief The sibling group.
  const Group& group() const noexcept { return group_; }
  /// \brief The context of the group's training forward, with P and every Q_i.
  const sibling_context<T>& context() const noexcept { return *context_; }
  /// \brief G_i = dL/dY_i, n x out_i, one per sibling in the group's order.
  const std::tuple<detail::closure_t<GD>...>& upstream() const noexcept { return upstream_; }

 private:
  template <class DX, class... Out>
  void run(assign_mode mode, DX& dx, Out&... grads) const {
    static_assert(sizeof...(Out) == Group::size, "vera::backward (siblings): dX, then one gradients<T> per sibling");
    static_assert((std::is_same_v<Out, gradients<T>> && ...),
                  "vera::backward (siblings): parameter destinations must be vera::gradients<T>");
    static_assert(std::is_same_v<typename std::decay_t<DX>::Scalar, T> ||
                      std::is_same_v<typename std::decay_t<DX>::Scalar, typename Group::storage>,
                  "vera::backward (siblings): dX must have the siblings' scalar type (float or bfloat16 for "
                  "bfloat16 storage)");
    detail::check_dx_against_siblings("vera::backward (siblings)", group_, dx, upstream_);
    detail::check_distinct_gradients("vera::backward (siblings)", grads...);
    const index rows = context_->rows();
    const bool resize = mode == assign_mode::overwrite && detail::is_resizable<DX> &&
                        (dx.rows() != rows || dx.cols() != group_.in_features());
    if (!resize) vera::detail::check_shape("dX", rows, group_.in_features(), dx.rows(), dx.cols());
    auto outs = std::forward_as_tuple(grads...);
    bool sizing[Group::size];
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      sizing[I] = detail::gradient_buffers_need_sizing(std::get<I>(outs), group_.template member<I>().layer(), mode,
                                                       [] { return detail::sibling_operand(I, "gradients"); });
    });
    // Every check has passed: only now is anything resized or written.
    if constexpr (detail::is_resizable<DX>) {
      if (resize) dx.resize(rows, group_.in_features());
    }
    detail::for_each_index<Group::size>([&](auto i) {
      constexpr std::size_t I = decltype(i)::value;
      if (sizing[I]) {
        const adapter<T>& ad = group_.template member<I>().layer();
        std::get<I>(outs).lambda_b.resize(ad.out_features());
        std::get<I>(outs).lambda_d.resize(ad.rank());
      }
    });
    evaluate(Exec{}, *this, dx, outs, mode);
  }

  Group group_;
  const sibling_context<T>* context_;
  std::tuple<detail::closure_t<GD>...> upstream_;
};

}  // namespace detail

/// \brief Lazy backward of the whole group in one pass (see sibling_backward_expr). Shapes:
///        G_i n x out_i in the group's order; ctx from the group's `.train(sibling_context&)`.
///        The results are dX n x in and one (out_i, rank) gradients<T> per sibling.
/// \throws state_error if ctx holds no training forward; shape_error for a G_i of another shape
///         or a ctx filled by another group; rank_error when ctx was filled at another rank.
template <class Exec, class... Layers, class T, class... GD, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::sibling_backward_expr<Exec, detail::sibling_group<Layers...>, GD...> backward(
    Exec, const detail::sibling_group<Layers...>& group, const sibling_context<T>& ctx, const Eigen::MatrixBase<GD>&... g) {
  return {group, ctx, g.derived()...};
}
/// \brief Lazy one-pass backward of the group on the default (CPU) policy; as the overload above.
template <class... Layers, class T, class... GD>
detail::sibling_backward_expr<exec::default_policy, detail::sibling_group<Layers...>, GD...> backward(
    const detail::sibling_group<Layers...>& group, const sibling_context<T>& ctx, const Eigen::MatrixBase<GD>&... g) {
  return {group, ctx, g.derived()...};
}

/// \brief Lazy gradients of every sibling's lambda_b and lambda_d. Shapes: G_i n x out_i, in
///        the group's order; ctx from the group's training forward of the same n rows. The
///        result is one (out_i, rank) gradients<T> per sibling.
/// \throws state_error if ctx holds no training forward; shape_error for a G_i of another shape;
///         rank_error when ctx was filled by a forward of another rank.
template <class Exec, class... Layers, class T, class... GD, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::sibling_parameter_gradient_expr<Exec, detail::sibling_group<Layers...>, GD...> parameter_gradients(
    Exec, const detail::sibling_group<Layers...>& group, const forward_context<T>& ctx, const Eigen::MatrixBase<GD>&... g) {
  return {group, ctx, g.derived()...};
}
/// \brief Lazy gradients of every sibling's lambda_b and lambda_d on the default (CPU) policy;
///        as the overload above.
template <class... Layers, class T, class... GD>
detail::sibling_parameter_gradient_expr<exec::default_policy, detail::sibling_group<Layers...>, GD...> parameter_gradients(
    const detail::sibling_group<Layers...>& group, const forward_context<T>& ctx, const Eigen::MatrixBase<GD>&... g) {
  return {group, ctx, g.derived()...};
}

/// \brief Lazy gradient of the group's shared input X. Shapes as for parameter_gradients;
///        the result dX is n x in.
/// \throws state_error if ctx holds no training forward; shape_error for a G_i of another shape;
///         rank_error when ctx was filled by a forward of another rank.
template <class Exec, class... Layers, class T, class... GD, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::sibling_input_gradient_expr<Exec, detail::sibling_group<Layers...>, GD...> input_gradient(
    Exec, const detail::sibling_group<Layers...>& group, const forward_context<T>& ctx, const Eigen::MatrixBase<GD>&... g) {
  return {group, ctx, g.derived()...};
}
/// \brief Lazy gradient of the group's shared input X on the default (CPU) policy; as the
///        overload above.
template <class... Layers, class T, class... GD>
detail::sibling_input_gradient_expr<exec::default_policy, detail::sibling_group<Layers...>, GD...> input_gradient(
    const detail::sibling_group<Layers...>& group, const forward_context<T>& ctx, const Eigen::MatrixBase<GD>&... g) {
  return {group, ctx, g.derived()...};
}

}  // namespace vera
