// SPDX-License-Identifier: Apache-2.0
// The xtensor operand family of the expression nodes: xtensor operands held by xtensor's closure
// rule and checked by the Eigen family's checks over their extents; the five expressions.
#pragma once

#include <type_traits>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/core/shape.hpp"
#include "vera/expr/eigen_operands.hpp"
#include "vera/expr/nodes.hpp"
#include "vera/expr/operand.hpp"
#include "vera/xtensor/result.hpp"
#include "vera/xtensor/storage.hpp"

namespace vera::xt {

namespace detail {

/// \brief The xtensor operand family of the expression nodes (vera/expr/nodes.hpp).
///
/// Operands are any xtensor expressions, held with xtensor's closure rule (a const reference to
/// an lvalue, a copy of a temporary, so a stored expression never dangles). The layer, the
/// forward context and the workspace are the Eigen family's, which this family derives from, so
/// `.train(ctx)`, `.using_workspace(ws)` and `.with_order(o)` are the nodes' own. Each check
/// asserts the operands' scalar types and dimension counts, then runs the Eigen family's check
/// over maps that carry only the operands' extents: the same messages, one per mistake. Results
/// reach xt::xtensor destinations and vera::xt::gradients (vera/xtensor/result.hpp).
struct xtensor_operands : vera::detail::eigen_operands {
  /// How an operand of type E (as deduced from a forwarding reference) is held.
  template <class E>
  using held = detail::closure_t<E>;
  /// How a bias (or vera::no_bias) is held.
  template <class B>
  using held_bias = detail::closure_t<B>;
  /// Where results go: new or existing 2-D tensors, vera::xt::gradients, W0 for merges.
  using results = vera::detail::destinations<detail::matrix_result, detail::gradient_result, detail::delta_result,
                               detail::merged_result>;

  /// \brief Rows of a 2-D operand.
  template <class E>
  static index rows(const E& e) {
    return detail::extent(e, 0);
  }
  /// \brief Columns of a 2-D operand.
  template <class E>
  static index cols(const E& e) {
    return detail::extent(e, 1);
  }

  /// \brief X, W0 and bias of a forward: X of the adapter's scalar (or bfloat16 for a float
  ///        adapter), W0 of X's, a bias of the adapter's or X's; then as vera::forward.
  template <class X, class W, class Bias, class T>
  static void check_forward(const X& x, const W& w0, const Bias& bias, const adapter<T>& ad) {
    using S = detail::storage_t<X, T>;
    static_assert(detail::holds_storage_for<X, T>,
                  "vera::xt::forward: X must hold the adapter's scalar type (or bfloat16 for a float "
                  "adapter)");
    // Asked only once X is accepted (S is then its scalar): one mistake, one message.
    static_assert(!detail::holds_storage_for<X, T> || detail::holds_scalar<W, S>,
                  "vera::xt::forward: W0 must hold X's scalar type");
    if constexpr (!std::is_same_v<Bias, no_bias_t>) {
      static_assert(detail::bias_fits<Bias, S, T>,
                    "vera::xt::forward: bias must hold the adapter's scalar type or X's (a bfloat16 "
                    "layer takes a float or a bfloat16 bias)");
    }
    detail::check_dimension<2>("X", x);
    detail::check_dimension<2>("W0", w0);
    vera::detail::eigen_operands::check_forward(detail::shape_only<S>(x), detail::shape_only<S>(w0),
                                  detail::bias_shape_only<S, T>(bias), ad);
  }
  /// \brief G of the parameter gradients, against the adapter and the context; as
  ///        vera::parameter_gradients.
  template <class G, class T>
  static void check_upstream(const G& g, const adapter<T>& ad, const forward_context<T>& ctx) {
    static_assert(detail::holds_storage_for<G, T>,
                  "vera::xt::parameter_gradients: G must hold the adapter's scalar type (or bfloat16 "
                  "for a float adapter)");
    detail::check_dimension<2>("G", g);
    vera::detail::eigen_operands::check_upstream(detail::shape_only<detail::storage_t<G, T>>(g), ad, ctx);
  }
  /// \brief G and W0 of an input gradient (W0 of G's scalar); as vera::input_gradient.
  template <class G, class W, class T>
  static void check_input_gradient(const G& g, const W& w0, const adapter<T>& ad,
                                   const forward_context<T>& ctx) {
    static_assert(detail::holds_storage_for<G, T>,
                  "vera::xt::input_gradient: G must hold the adapter's scalar type (or bfloat16 for "
                  "a float adapter)");
    using S = detail::storage_t<G, T>;  // G's scalar once G is accepted, so W0 is asked only then
    static_assert(!detail::holds_storage_for<G, T> || detail::holds_scalar<W, S>,
                  "vera::xt::input_gradient: W0 must hold G's scalar type");
    detail::check_dimension<2>("G", g);
    detail::check_dimension<2>("W0", w0);
    vera::detail::eigen_operands::check_input_gradient(detail::shape_only<S>(g), detail::shape_only<S>(w0), ad, ctx);
  }
  /// \brief W0 of a merged weight; as vera::merged_weight.
  template <class W, class T>
  static void check_base_weight(const W& w0, const adapter<T>& ad) {
    static_assert(detail::holds_storage_for<W, T>,
                  "vera::xt::merged_weight: W0 must hold the adapter's scalar type (or bfloat16 for a "
                  "float adapter)");
    detail::check_dimension<2>("W0", w0);
    vera::detail::eigen_operands::check_base_weight(detail::shape_only<detail::storage_t<W, T>>(w0), ad);
  }
};

/// \brief Y (n x out) = X W0^T + bias + ((X A^T) Λd) (Λb B)^T on xtensor operands, lazily: the
///        forward node over the xtensor family (X, W, Bias as deduced by vera::xt::forward).
///
/// Modifiers `.train(ctx)`, `.using_workspace(ws)`, `.with_order(o)`. `xt::xtensor<R, 2> y =
/// expr;`, `expr.eval()`, `expr.assign_to(y)` overwrite (an xt::xtensor or xt::xarray of another
/// shape is given fresh memory; any other destination must be n x out and dense row-major, or
/// shape_error is thrown before anything is written); `expr.add_to(y)` accumulates (y must
/// already be n x out and dense row-major). R is the adapter's T, or bfloat16 when X and W0 are
/// bfloat16 (a float adapter); such a bfloat16 layer also writes its float32 result, unrounded,
/// into a float destination. Evaluation throws aliasing_error as vera::detail::forward_expr does, and
/// value_error for the merged order on bfloat16 operands.
template <class Exec, class X, class W, class Bias, class T>
using forward_expr = vera::detail::forward_expr<Exec, X, W, Bias, T, xtensor_operands>;

/// \brief dL/d lambda_b and dL/d lambda_d from an xtensor G = dL/dY, lazily.
///
/// `grads = expr;` overwrites, `grads += expr;` accumulates (grads a vera::xt::gradients<T>), as
/// the Eigen front-end's parameter_gradient_expr. G holds the adapter's T, or bfloat16 for a
/// float adapter; the gradients stay in T.
template <class Exec, class G, class T>
using parameter_gradient_expr = vera::detail::parameter_gradient_expr<Exec, G, T, xtensor_operands>;

/// \brief dL/dX (n x in) = G (W0 + ΔW), with the dropout mask on the adapter term, lazily.
///
/// Evaluated like vera::xt::detail::forward_expr. G and W0 hold the adapter's T, or both bfloat16 for a
/// float adapter (then dX is bfloat16, or the float32 result in a float destination). Evaluation
/// throws aliasing_error when dX overlaps G or W0, and value_error for the merged order on
/// bfloat16 operands.
template <class Exec, class G, class W, class T>
using input_gradient_expr = vera::detail::input_gradient_expr<Exec, G, W, T, xtensor_operands>;

/// \brief ΔW = Λb B Λd A (out x in; in x out with fan_in_fan_out) as an xtensor, lazily.
///
/// `eval()`, conversion and `assign_to(w)` overwrite; `add_to(w)` is a merge and
/// `subtract_from(w)` an unmerge, one GEMM into w with no temporary of w's size (for both, w
/// must have ΔW's shape and be dense row-major, or shape_error is thrown). `eval()` gives the
/// adapter's T; for a float adapter, `assign_to`, `add_to` and `subtract_from` also take a
/// bfloat16 w, which gets PEFT's bfloat16 merge (ΔW and the sum in float32, rounded once).
template <class Exec, class T>
using delta_weight_expr = vera::detail::delta_weight_expr<Exec, T, xtensor_operands>;

/// \brief W0 + ΔW as an xtensor, lazily; W0 has the layout the adapter's options say.
///
/// Evaluated through `eval()`, the conversion or `assign_to(w)`, as vera::xt::detail::forward_expr; the
/// result holds W0's scalar (a bfloat16 W0 with a float adapter gives PEFT's bfloat16 merge).
/// Evaluation throws aliasing_error when the destination overlaps W0.
template <class Exec, class W, class T>
using merged_weight_expr = vera::detail::merged_weight_expr<Exec, W, T, xtensor_operands>;

/// `node`, the Eigen family's node over e's mapped operands, with e's workspace.
template <class E, class Node>
Node with_scratch_of(const E& e, const Node& node) {
  return e.scratch() != nullptr ? node.using_workspace(*e.scratch()) : node;
}

}  // namespace detail

}  // namespace vera::xt
