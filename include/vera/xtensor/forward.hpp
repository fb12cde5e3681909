// SPDX-License-Identifier: Apache-2.0
// Forward of an adapted layer on xtensor operands, evaluated by the shared forward expression.
#pragma once

#include <type_traits>
#include <utility>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/backend/cpu/forward.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/forward.hpp"
#include "vera/xtensor/modifiers.hpp"
#include "vera/xtensor/result.hpp"
#include "vera/xtensor/storage.hpp"

namespace vera::xt {

namespace detail {

// The Eigen front-end's forward over the operands' extents, in X's storage (S): it validates
// them and carries the modifiers' settings.
template <class Exec, class S, class Bias, class T>
using checked_forward =
    decltype(vera::forward(Exec{}, std::declval<extents_map<S>>(), std::declval<extents_map<S>>(),
                           bias_shape_only<S, T>(std::declval<const Bias&>()),
                           std::declval<const adapter<T>&>()));

}  // namespace detail

/// \brief Y (n x out) = X W0^T + bias + ((X A^T) Λd) (Λb B)^T on xtensor operands, lazily.
///
/// The xtensor counterpart of vera::forward_expr, with the same modifiers (`.train(ctx)`,
/// `.using_workspace(ws)`, `.with_order(o)`) and the same evaluator: at evaluation each operand
/// becomes a row-major Eigen map (a copy first if it is not dense row-major memory) and the
/// Eigen front-end's expression computes straight into the destination.
/// `xt::xtensor<R, 2> y = expr;`, `expr.eval()`, `expr.assign_to(y)` overwrite; `expr.add_to(y)`
/// accumulates (y must already be n x out and dense row-major, or shape_error is thrown).
/// R is the adapter's T, or bfloat16 when X and W0 are bfloat16 (a float adapter); such a
/// bfloat16 layer also writes its float32 result, unrounded, into a float destination.
/// `rows()` is n and `cols()` out. These come from an internal base: an
/// xt::xtensor or xt::xarray destination of another shape is given fresh memory, any other
/// destination must be n x out and dense row-major, or shape_error is thrown before anything is
/// written. Evaluation throws aliasing_error as vera::forward_expr does, and value_error for the
/// merged order on bfloat16 operands.
template <class Exec, class X, class W, class Bias, class T>
class forward_expr : public detail::checked_matrix_result<
                         forward_expr<Exec, X, W, Bias, T>,
                         detail::checked_forward<Exec, detail::storage_t<X, T>, Bias, T>, T> {
  // X's storage: T, or bfloat16 for a float adapter; W0 must hold the same.
  using S = detail::storage_t<X, T>;
  static_assert(detail::holds_storage_for<X, T>,
                "vera::xt::forward: X must hold the adapter's scalar type (or bfloat16 for a float "
                "adapter)");
  // Asked only once X is accepted (S is then its scalar): one mistake, one message.
  static_assert(!detail::holds_storage_for<X, T> || detail::holds_scalar<W, S>,
                "vera::xt::forward: W0 must hold X's scalar type");

  using checked_type = detail::checked_forward<Exec, S, Bias, T>;
  using result = detail::checked_matrix_result<forward_expr, checked_type, T>;
  using modifiers = detail::modifiers_of<forward_expr, checked_type>;

 public:
  /// \brief Holds the operands (lvalues by reference, temporaries by value) and checks their
  ///        shapes; see vera::xt::forward.
  /// \throws shape_error naming the operand for a wrong dimension count or shape.
  template <class XA, class WA, class BA>
  forward_expr(XA&& x, WA&& w0, BA&& bias, const adapter<T>& ad)
      : result(validated(x, w0, bias, ad)), x_(std::forward<XA>(x)), w0_(std::forward<WA>(w0)),
        bias_(std::forward<BA>(bias)) {}

 private:
  friend typename result::evaluation;
  friend modifiers;

  forward_expr(const forward_expr& operands, const checked_type& checked)
      : result(checked), x_(operands.x_), w0_(operands.w0_), bias_(operands.bias_) {}

  template <class XC, class WC, class BC>
  static checked_type validated(const XC& x, const WC& w0, const BC& bias, const adapter<T>& ad) {
    if constexpr (!std::is_same_v<std::decay_t<Bias>, no_bias_t>) {
      static_assert(detail::bias_fits<Bias, S, T>,
                    "vera::xt::forward: bias must hold the adapter's scalar type or X's (a bfloat16 "
                    "layer takes a float or a bfloat16 bias)");
    }
    detail::check_dimension<2>("X", x);
    detail::check_dimension<2>("W0", w0);
    return vera::forward(Exec{}, detail::shape_only<S>(x), detail::shape_only<S>(w0),
                         detail::bias_shape_only<S, T>(bias), ad);
  }

  template <class Dst>
  void run(Dst& dst, assign_mode mode) const {
    const detail::input_matrix<S> x(x_);
    const detail::input_matrix<S> w0(w0_);
    detail::with_bias<S, T>(bias_, [&](const auto& bias) {
      const auto e = vera::forward(Exec{}, x.map(), w0.map(), bias, this->checked().layer());
      detail::assign(this->with_settings(e), dst, mode);
    });
  }

  detail::closure_t<X> x_;
  detail::closure_t<W> w0_;
  detail::closure_t<Bias> bias_;
};

/// \brief Lazy forward of an adapted layer on policy `Exec`, from xtensor operands.
///
/// Shapes: X n x in, W0 out x in (in x out with fan_in_fan_out), bias out elements (1-D) or
/// vera::no_bias. Any xtensor expression of the adapter's scalar type is accepted, or of
/// Eigen::bfloat16 for a float adapter (X and W0 alike; the result is then bfloat16): dense
/// row-major memory (xt::xtensor, xt::xarray, adaptors, contiguous views) is read in place,
/// anything else is copied once at evaluation. Lvalues are held by reference, temporaries by
/// value. A temporary adapter is refused at compile time.
/// \throws shape_error naming the operand when a dimension count or shape is wrong.
template <class Exec, class X, class W, class Bias, class T,
          class = std::enable_if_t<std::is_empty_v<Exec>>>
forward_expr<Exec, X, W, Bias, T> forward(Exec, X&& x, W&& w0, Bias&& bias, const adapter<T>& ad) {
  return {std::forward<X>(x), std::forward<W>(w0), std::forward<Bias>(bias), ad};
}

/// \brief Lazy forward on the default (CPU) policy; as the overload above.
template <class X, class W, class Bias, class T>
forward_expr<exec::default_policy, X, W, Bias, T> forward(X&& x, W&& w0, Bias&& bias,
                                                         const adapter<T>& ad) {
  return {std::forward<X>(x), std::forward<W>(w0), std::forward<Bias>(bias), ad};
}

// An expression must not outlive its adapter: binding a temporary adapter is refused.
template <class X, class W, class Bias, class T>
void forward(X&&, W&&, Bias&&, adapter<T>&&) = delete;

}  // namespace vera::xt
