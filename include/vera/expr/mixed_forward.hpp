// SPDX-License-Identifier: Apache-2.0
// Lazy mixed-adapter forward: each row of X goes through its own adapter of a set, in shared GEMMs.
#pragma once

#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter_set.hpp"
#include "vera/adapter/mixed_context.hpp"
#include "vera/adapter/mixed_workspace.hpp"
#include "vera/adapter/resolve_rows.hpp"
#include "vera/adapter/row_assignment.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/assignable.hpp"
#include "vera/expr/forward.hpp"
#include "vera/expr/operand.hpp"
#include "vera/expr/set_merge.hpp"
#include "vera/expr/settings.hpp"

namespace vera {

namespace detail {

template <class Exec, class XD, class WD, class Bias, class T>
class mixed_forward_expr;

}  // namespace detail

}  // namespace vera

namespace Eigen::internal {
template <class Exec, class XD, class WD, class Bias, class T>
struct traits<vera::detail::mixed_forward_expr<Exec, XD, WD, Bias, T>> {
  using ReturnType = Eigen::Matrix<vera::detail::result_scalar_t<XD, T>, Eigen::Dynamic, Eigen::Dynamic>;
};
}  // namespace Eigen::internal

namespace vera {

namespace detail {

// W0 is out x in, or in x out when the set stores it transposed (fan_in_fan_out).
template <class WD, class T>
void check_set_weight(const char* operand, const WD& w0, const adapter_set<T>& set) {
  if (set.fan_in_fan_out()) {
    vera::detail::check_shape(operand, set.in_features(), set.out_features(), w0.rows(), w0.cols());
  } else {
    vera::detail::check_shape(operand, set.out_features(), set.in_features(), w0.rows(), w0.cols());
  }
}

template <class T>
void require_nothing_merged(const char* operation, const adapter_set<T>& set) {
  if (set.merged() != no_adapter) {
    throw state_error(std::string(operation) + ": adapter " + std::to_string(set.merged()) +
                      " is merged into W0, which would add it to every row; unmerge it first");
  }
}


/// \brief Y (n x out) = X W0^T + bias + s_a(i) ((P ⊙ d_a(i)) B^T) ⊙ b_a(i) row by row, with
///        P = X A^T and a(i) the adapter of row i, lazily.
///
/// Rows whose id is no_adapter, or whose adapter is disabled, get the base model only. Every
/// row shares the two GEMMs X W0^T and P B^T; the per-adapter vectors are gathered row by row.
/// `Y = expr;` overwrites Y, `expr.add_to(Y)` accumulates; Y must not share memory with X, W0 or
/// bias. `.train(ctx)` applies each adapter's dropout to its rows and saves what backward needs.
/// `.with_order(o)` forces the association order where one weight can serve the batch (every row
/// on one adapter, no dropout); other batches run the low-rank order. X, W0 and bias may be stored
/// in bfloat16 for a float set (the result is then bfloat16), with the single-adapter bfloat16
/// path's semantics: A and B rounded to bfloat16, every GEMM accumulating in float32, b and d in
/// float32, and the low-rank order only (asking for the merged one throws value_error).
/// Evaluation throws state_error when an adapter of the set was merged after the expression was
/// built, value_error when a row's adapter was removed since.
template <class Exec, class XD, class WD, class Bias, class T>
class mixed_forward_expr
    : public detail::assignable<detail::mixed_forward_expr<Exec, XD, WD, Bias, T>, Exec>,
      public detail::uses_workspace<detail::mixed_forward_expr<Exec, XD, WD, Bias, T>, T, mixed_workspace<T>>,
      public detail::takes_order<detail::mixed_forward_expr<Exec, XD, WD, Bias, T>>,
      public detail::trains<detail::mixed_forward_expr<Exec, XD, WD, Bias, T>, mixed_context<T>> {
  static_assert(vera::detail::storage_matches<XD, T>,
                "vera::mixed_forward: X must have the set's scalar type (or bfloat16 for a float set)");
  static_assert(std::is_same_v<typename XD::Scalar, typename WD::Scalar>,
                "vera::mixed_forward: X and W0 must have the same scalar type");

 public:
  /// \brief Checks the operands and the row assignment; see vera::mixed_forward.
  /// \throws shape_error, value_error, state_error as vera::mixed_forward.
  mixed_forward_expr(const XD& x, const WD& w0, const Bias& bias, const adapter_set<T>& set,
                     const row_assignment& ids)
      : x_(x), w0_(w0), bias_(bias), set_(&set), ids_(ids) {
    vera::detail::check_cols("X", set.in_features(), x.cols(), "the layer's in_features");
    detail::check_set_weight("W0", w0, set);
    if constexpr (!std::is_same_v<Bias, no_bias_t>) {
      static_assert(vera::detail::scalar_matches<Bias, T> || std::is_same_v<typename Bias::Scalar, typename XD::Scalar>,
                    "vera::mixed_forward: bias must have the set's scalar type or X's (bfloat16)");
      vera::detail::check_size("bias", set.out_features(), bias.size());
    }
    detail::require_nothing_merged("vera::mixed_forward", set);
    (void)vera::detail::resolve_rows(set, ids, x.rows(), nullptr, "vera::mixed_forward");
  }

  /// \brief n, the rows of X.
  Eigen::Index rows() const { return x_.rows(); }
  /// \brief out, the layer's output features.
  Eigen::Index cols() const { return set_->out_features(); }

  /// \brief Checked by `Y = expr`, `expr.assign_to(Y)` and `expr.add_to(Y)` besides Y's shape, at
  ///        compile time: Y holds the set's scalar type, or bfloat16 when X does.
  template <class Dst>
  void check_destination(const Dst&) const {
    static_assert(vera::detail::result_fits<Dst, XD, T>,
                  "vera::mixed_forward: Y must have the set's scalar type (or bfloat16 for bfloat16 X)");
  }

  /// \brief X, n x in.
  const detail::closure_t<XD>& x() const noexcept { return x_; }
  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const detail::closure_t<WD>& w0() const noexcept { return w0_; }
  /// \brief The bias (out elements) or vera::no_bias.
  const detail::bias_closure_t<Bias>& bias() const noexcept { return bias_; }
  /// \brief The adapter set.
  const adapter_set<T>& set() const noexcept { return *set_; }
  /// \brief The per-row adapter ids.
  const row_assignment& assignment() const noexcept { return ids_; }

 private:
  detail::closure_t<XD> x_;
  detail::closure_t<WD> w0_;
  detail::bias_closure_t<Bias> bias_;
  const adapter_set<T>* set_;
  row_assignment ids_;
};

}  // namespace detail

/// \brief Lazy mixed forward on policy `Exec`.
///
/// Shapes: X n x in, W0 out x in (in x out with fan_in_fan_out), bias out (or vera::no_bias),
/// ids n adapter ids (std::vector<int>, a contiguous Eigen int vector or a row_assignment).
/// The result is n x out. X and W0 have the set's scalar type, or both bfloat16 for a float set
/// (the result is then bfloat16). A temporary set is refused at compile time.
/// \throws shape_error naming the operand for a wrong shape (ids included), value_error naming
///         the row for an id that is not in the set, state_error while an adapter of the set is
///         merged.
template <class Exec, class XD, class WD, class Bias, class T,
          class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::mixed_forward_expr<Exec, XD, WD, Bias, T> mixed_forward(Exec, const Eigen::MatrixBase<XD>& x,
                                                       const Eigen::MatrixBase<WD>& w0,
                                                       const Bias& bias, const adapter_set<T>& set,
                                                       const row_assignment& ids) {
  if constexpr (std::is_same_v<Bias, no_bias_t>) {
    return {x.derived(), w0.derived(), bias, set, ids};
  } else {
    return {x.derived(), w0.derived(), bias.derived(), set, ids};
  }
}

/// \brief Lazy mixed forward on the default (CPU) policy.
template <class XD, class WD, class Bias, class T>
detail::mixed_forward_expr<exec::default_policy, XD, WD, Bias, T> mixed_forward(
    const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<WD>& w0, const Bias& bias,
    const adapter_set<T>& set, const row_assignment& ids) {
  return mixed_forward(exec::default_policy{}, x, w0, bias, set, ids);
}

/// \brief Single-adapter call: every row uses the set's active adapter (see adapter_set::select);
///        with no active adapter every row runs the base model.
/// \throws as the overload with ids.
template <class XD, class WD, class Bias, class T>
detail::mixed_forward_expr<exec::default_policy, XD, WD, Bias, T> mixed_forward(
    const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<WD>& w0, const Bias& bias,
    const adapter_set<T>& set) {
  return mixed_forward(exec::default_policy{}, x, w0, bias, set,
                       row_assignment::uniform(set.active(), x.rows()));
}

// An expression must not outlive its set: binding a temporary set is refused.
template <class XD, class WD, class Bias, class T>
void mixed_forward(const Eigen::MatrixBase<XD>&, const Eigen::MatrixBase<WD>&, const Bias&,
                   adapter_set<T>&&, const row_assignment&) = delete;
template <class XD, class WD, class Bias, class T>
void mixed_forward(const Eigen::MatrixBase<XD>&, const Eigen::MatrixBase<WD>&, const Bias&,
                   adapter_set<T>&&) = delete;

}  // namespace vera
