// SPDX-License-Identifier: Apache-2.0
// Lazy mixed-adapter backward: gradients of every adapter in a batch, and of X, in shared GEMMs.
#pragma once

#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter_set.hpp"
#include "vera/adapter/mixed_context.hpp"
#include "vera/adapter/mixed_gradients.hpp"
#include "vera/adapter/mixed_workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/assignable.hpp"
#include "vera/expr/mixed_forward.hpp"
#include "vera/expr/operand.hpp"
#include "vera/expr/settings.hpp"

namespace vera {

namespace detail {

template <class Exec, class GD, class T>
class mixed_parameter_gradient_expr;
template <class Exec, class GD, class WD, class T>
class mixed_input_gradient_expr;
template <class Exec, class GD, class WD, class T>
class mixed_backward_expr;

}  // namespace detail

}  // namespace vera

namespace Eigen::internal {
template <class Exec, class GD, class WD, class T>
struct traits<vera::detail::mixed_input_gradient_expr<Exec, GD, WD, T>> {
  using ReturnType = Eigen::Matrix<vera::detail::result_scalar_t<GD, T>, Eigen::Dynamic, Eigen::Dynamic>;
};
}  // namespace Eigen::internal

namespace vera {

namespace detail {

template <class GD, class T>
void check_mixed_upstream(const char* operation, const GD& g, const adapter_set<T>& set,
                          const mixed_context<T>& ctx) {
  if (!ctx.ready()) {
    throw state_error(std::string(operation) + ": the context holds no mixed training forward; "
                      "evaluate vera::mixed_forward(...).train(ctx) first");
  }
  if (ctx.owner() != &set) {
    throw state_error(std::string(operation) + ": the context was filled by a different adapter set");
  }
  if (ctx.owner_version() != set.version()) {
    throw state_error(std::string(operation) + ": adapters were added, removed, enabled or disabled "
                      "since the training forward; run the forward again");
  }
  require_nothing_merged(operation, set);
  vera::detail::check_cols("G", set.out_features(), g.cols(), "the layer's out_features");
  vera::detail::check_rows("G", ctx.rows(), g.rows(), "rows of the training forward");
}

// As the core's gradients<T>: empty buffers are sized on overwrite; buffers of another size throw
// rather than being reallocated under whoever holds their address (an optimizer, a bucket).
template <class T>
void prepare_gradients(mixed_gradients<T>& out, const adapter_set<T>& set, assign_mode mode) {
  if (mode == assign_mode::overwrite && out.lambda_b.size() == 0 && out.lambda_d.size() == 0) {
    out.lambda_b.resize(set.out_features(), set.columns());
    out.lambda_d.resize(set.rank(), set.columns());
  } else {
    vera::detail::check_shape("gradients.lambda_b", set.out_features(), set.columns(), out.lambda_b.rows(),
                out.lambda_b.cols());
    vera::detail::check_shape("gradients.lambda_d", set.rank(), set.columns(), out.lambda_d.rows(),
                out.lambda_d.cols());
  }
}


/// \brief dL/d lambda_b (out x k) and dL/d lambda_d (rank x k) of every adapter of the set from
///        G = dL/dY and a mixed context, lazily:
///        grad_b[a] = Σ_{i in a} (G ⊙ Q)_i,  grad_d[a] = Σ_{i in a} s_a (T ⊙ P)_i, T = (G ⊙ b_a(i)) B.
///
/// `grads = expr;` overwrites every column (adapters without rows, frozen vectors and free
/// columns get zero); `grads += expr;` adds to the adapters present and leaves the rest alone.
template <class Exec, class GD, class T>
class mixed_parameter_gradient_expr
    : public detail::uses_workspace<detail::mixed_parameter_gradient_expr<Exec, GD, T>, T, mixed_workspace<T>> {
  static_assert(vera::detail::storage_matches<GD, T>,
                "vera::mixed_parameter_gradients: G must have the set's scalar type (or bfloat16 for a float set)");

 public:
  /// \brief Checks G against the set and the context; see vera::mixed_parameter_gradients.
  /// \throws state_error, shape_error as vera::mixed_parameter_gradients.
  mixed_parameter_gradient_expr(const GD& g, const adapter_set<T>& set, const mixed_context<T>& ctx)
      : g_(g), set_(&set), context_(&ctx) {
    detail::check_mixed_upstream("vera::mixed_parameter_gradients", g, set, ctx);
  }

  /// \brief Writes (or adds) the gradients into `out`. On overwrite, empty buffers (a
  ///        default-constructed mixed_gradients<T>) are sized out x k and rank x k; buffers of
  ///        another size are never reallocated.
  /// \throws state_error when the context no longer matches the set; shape_error when `out`
  ///         holds buffers not sized out x k and rank x k (k = set.columns()).
  void eval_to(mixed_gradients<T>& out, assign_mode mode = assign_mode::overwrite) const {
    detail::check_mixed_upstream("vera::mixed_parameter_gradients", g_, *set_, *context_);
    detail::prepare_gradients(out, *set_, mode);
    evaluate(Exec{}, *this, out, mode);
  }
  /// \brief Evaluates into fresh mixed_gradients<T>.
  mixed_gradients<T> eval() const {
    mixed_gradients<T> out;
    eval_to(out);
    return out;
  }
  /// \brief Evaluates into fresh mixed_gradients<T>, for `mixed_gradients<T> g = expr;`.
  operator mixed_gradients<T>() const { return eval(); }  // NOLINT: evaluation on conversion is the point

  /// \brief G = dL/dY, n x out.
  const detail::closure_t<GD>& upstream() const noexcept { return g_; }
  /// \brief The adapter set.
  const adapter_set<T>& set() const noexcept { return *set_; }
  /// \brief The context of the mixed training forward.
  const mixed_context<T>& context() const noexcept { return *context_; }

 private:
  detail::closure_t<GD> g_;
  const adapter_set<T>* set_;
  const mixed_context<T>* context_;
};

/// \brief `grads += mixed_parameter_gradients(...)`: accumulates into existing buffers.
/// \throws shape_error when `out` is not out x k and rank x k; state_error as eval_to.
template <class Exec, class GD, class T>
mixed_gradients<T>& operator+=(mixed_gradients<T>& out, const detail::mixed_parameter_gradient_expr<Exec, GD, T>& e) {
  e.eval_to(out, assign_mode::accumulate);
  return out;
}

/// \brief dL/dX (n x in) = G W0 + (s_a(i) T ⊙ d_a(i)) A row by row, with each row's dropout mask
///        on the adapter term, lazily. `dX = expr;` overwrites, `expr.add_to(dX)` accumulates;
///        dX must not share memory with G or W0. `.with_order(o)` forces the association order
///        where one weight can serve the batch (every row on one adapter, no dropout). bfloat16
///        G and W0 (float set) give a bfloat16 dX and run the low-rank order only (asking for
///        the merged one throws value_error).
template <class Exec, class GD, class WD, class T>
class mixed_input_gradient_expr
    : public detail::assignable<detail::mixed_input_gradient_expr<Exec, GD, WD, T>, Exec>,
      public detail::uses_workspace<detail::mixed_input_gradient_expr<Exec, GD, WD, T>, T, mixed_workspace<T>>,
      public detail::takes_order<detail::mixed_input_gradient_expr<Exec, GD, WD, T>> {
  static_assert(vera::detail::storage_matches<GD, T>,
                "vera::mixed_input_gradient: G must have the set's scalar type (or bfloat16 for a float set)");
  static_assert(std::is_same_v<typename GD::Scalar, typename WD::Scalar>,
                "vera::mixed_input_gradient: G and W0 must have the same scalar type");

 public:
  /// \brief Checks G, W0 and the context; see vera::mixed_input_gradient.
  /// \throws state_error, shape_error as vera::mixed_input_gradient.
  mixed_input_gradient_expr(const GD& g, const WD& w0, const adapter_set<T>& set,
                            const mixed_context<T>& ctx)
      : g_(g), w0_(w0), set_(&set), context_(&ctx) {
    detail::check_mixed_upstream("vera::mixed_input_gradient", g, set, ctx);
    detail::check_set_weight("W0", w0, set);
  }

  /// \brief n, the rows of G.
  Eigen::Index rows() const { return g_.rows(); }
  /// \brief in, the layer's input features.
  Eigen::Index cols() const { return set_->in_features(); }

  /// \brief Checked by `dX = expr` and `expr.add_to(dX)` besides dX's shape (n x in): the context
  ///        must still match the set (aliasing with G or W0 is checked by the evaluator).
  /// \throws state_error when the context no longer matches the set.
  template <class Dst>
  void check_destination(const Dst&) const {
    static_assert(vera::detail::result_fits<Dst, GD, T>,
                  "vera::mixed_input_gradient: dX must have the set's scalar type (or bfloat16 for bfloat16 G)");
    detail::check_mixed_upstream("vera::mixed_input_gradient", g_, *set_, *context_);
  }

  /// \brief G = dL/dY, n x out.
  const detail::closure_t<GD>& upstream() const noexcept { return g_; }
  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const detail::closure_t<WD>& w0() const noexcept { return w0_; }
  /// \brief The adapter set.
  const adapter_set<T>& set() const noexcept { return *set_; }
  /// \brief The context of the mixed training forward.
  const mixed_context<T>& context() const noexcept { return *context_; }

 private:
  detail::closure_t<GD> g_;
  detail::closure_t<WD> w0_;
  const adapter_set<T>* set_;
  const mixed_context<T>* context_;
};

/// \brief Parameter gradients and dL/dX together, sharing T = (G ⊙ b_a(i)) B: four GEMMs in
///        all (T, Q = S B^T, G W0, U A), as the core's two backward calls need for one adapter.
///
/// `expr.eval_to(grads, dX)` overwrites both; with assign_mode::accumulate it adds to both.
/// `.with_order(o)` applies to dX as in mixed_input_gradient_expr, bfloat16 storage included.
template <class Exec, class GD, class WD, class T>
class mixed_backward_expr
    : public detail::uses_workspace<detail::mixed_backward_expr<Exec, GD, WD, T>, T, mixed_workspace<T>>,
      public detail::takes_order<detail::mixed_backward_expr<Exec, GD, WD, T>> {
  static_assert(vera::detail::storage_matches<GD, T>,
                "vera::mixed_backward: G must have the set's scalar type (or bfloat16 for a float set)");
  static_assert(std::is_same_v<typename GD::Scalar, typename WD::Scalar>,
                "vera::mixed_backward: G and W0 must have the same scalar type");

 public:
  /// \brief Checks G, W0 and the context; see vera::mixed_backward.
  /// \throws state_error, shape_error as vera::mixed_input_gradient.
  mixed_backward_expr(const GD& g, const WD& w0, const adapter_set<T>& set, const mixed_context<T>& ctx)
      : g_(g), w0_(w0), set_(&set), context_(&ctx) {
    detail::check_mixed_upstream("vera::mixed_backward", g, set, ctx);
    detail::check_set_weight("W0", w0, set);
  }

  /// \brief Writes (or adds) the gradients into `grads` and dL/dX (n x in) into `dx` (the set's
  ///        scalar type, or bfloat16 for bfloat16 G); dx must not share memory with G or W0. A
  ///        plain matrix dx is resized on overwrite; `grads` is sized on overwrite only when
  ///        empty, as in mixed_parameter_gradient_expr::eval_to.
  /// \throws state_error when the context no longer matches the set; shape_error for a dx
  ///         that is not n x in or non-empty gradients not sized out x k and rank x k (nothing
  ///         is resized then); aliasing_error when dx overlaps G or W0.
  template <class DX>
  void eval_to(mixed_gradients<T>& grads, Eigen::MatrixBase<DX>& dx,
               assign_mode mode = assign_mode::overwrite) const {
    static_assert(vera::detail::result_fits<DX, GD, T>,
                  "vera::mixed_backward: dX must have the set's scalar type (or bfloat16 for bfloat16 G)");
    detail::check_mixed_upstream("vera::mixed_backward", g_, *set_, *context_);
    const index rows = g_.rows();
    const index cols = set_->in_features();
    constexpr bool resizable = std::is_base_of_v<Eigen::PlainObjectBase<DX>, DX>;
    if (!resizable || mode != assign_mode::overwrite) vera::detail::check_shape("dX", rows, cols, dx.rows(), dx.cols());
    // The gradients are checked before dx is resized, so a refused call leaves both as they were.
    detail::prepare_gradients(grads, *set_, mode);
    if constexpr (resizable) {
      if (mode == assign_mode::overwrite) dx.derived().resize(rows, cols);
    }
    evaluate(Exec{}, *this, grads, dx.derived(), mode);
  }

  /// \brief G = dL/dY, n x out.
  const detail::closure_t<GD>& upstream() const noexcept { return g_; }
  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const detail::closure_t<WD>& w0() const noexcept { return w0_; }
  /// \brief The adapter set.
  const adapter_set<T>& set() const noexcept { return *set_; }
  /// \brief The context of the mixed training forward.
  const mixed_context<T>& context() const noexcept { return *context_; }

 private:
  detail::closure_t<GD> g_;
  detail::closure_t<WD> w0_;
  const adapter_set<T>* set_;
  const mixed_context<T>* context_;
};

}  // namespace detail

/// \brief Lazy gradients of every adapter's lambda_b and lambda_d. Shapes: G n x out, ctx from
///        the mixed training forward of the same n rows over the same, unchanged set; the result
///        is out x k and rank x k (k = set.columns()), float32 for bfloat16 G (float set).
/// \throws state_error if ctx holds no such forward (none, another set, the set changed since,
///         or an adapter is merged); shape_error for G of another shape.
template <class Exec, class GD, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::mixed_parameter_gradient_expr<Exec, GD, T> mixed_parameter_gradients(
    Exec, const Eigen::MatrixBase<GD>& g, const adapter_set<T>& set, const mixed_context<T>& ctx) {
  return {g.derived(), set, ctx};
}
/// \brief Lazy gradients of every adapter on the default (CPU) policy; as the overload above.
template <class GD, class T>
detail::mixed_parameter_gradient_expr<exec::default_policy, GD, T> mixed_parameter_gradients(
    const Eigen::MatrixBase<GD>& g, const adapter_set<T>& set, const mixed_context<T>& ctx) {
  return {g.derived(), set, ctx};
}
template <class GD, class T>
void mixed_parameter_gradients(const Eigen::MatrixBase<GD>&, adapter_set<T>&&,
                               const mixed_context<T>&) = delete;

/// \brief Lazy dL/dX (n x in). Shapes: G n x out, W0 as in vera::mixed_forward.
/// \throws state_error, shape_error as mixed_parameter_gradients; shape_error for W0 of another
///         shape.
template <class Exec, class GD, class WD, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::mixed_input_gradient_expr<Exec, GD, WD, T> mixed_input_gradient(Exec, const Eigen::MatrixBase<GD>& g,
                                                                const Eigen::MatrixBase<WD>& w0,
                                                                const adapter_set<T>& set,
                                                                const mixed_context<T>& ctx) {
  return {g.derived(), w0.derived(), set, ctx};
}
/// \brief Lazy dL/dX on the default (CPU) policy; as the overload above.
template <class GD, class WD, class T>
detail::mixed_input_gradient_expr<exec::default_policy, GD, WD, T> mixed_input_gradient(
    const Eigen::MatrixBase<GD>& g, const Eigen::MatrixBase<WD>& w0, const adapter_set<T>& set,
    const mixed_context<T>& ctx) {
  return {g.derived(), w0.derived(), set, ctx};
}
template <class GD, class WD, class T>
void mixed_input_gradient(const Eigen::MatrixBase<GD>&, const Eigen::MatrixBase<WD>&, adapter_set<T>&&,
                          const mixed_context<T>&) = delete;

/// \brief Lazy parameter and input gradients in one pass. Shapes as in the two calls above.
/// \throws as mixed_input_gradient.
template <class Exec, class GD, class WD, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::mixed_backward_expr<Exec, GD, WD, T> mixed_backward(Exec, const Eigen::MatrixBase<GD>& g,
                                                    const Eigen::MatrixBase<WD>& w0,
                                                    const adapter_set<T>& set,
                                                    const mixed_context<T>& ctx) {
  return {g.derived(), w0.derived(), set, ctx};
}
/// \brief Both gradients in one pass on the default (CPU) policy; as the overload above.
template <class GD, class WD, class T>
detail::mixed_backward_expr<exec::default_policy, GD, WD, T> mixed_backward(const Eigen::MatrixBase<GD>& g,
                                                                    const Eigen::MatrixBase<WD>& w0,
                                                                    const adapter_set<T>& set,
                                                                    const mixed_context<T>& ctx) {
  return {g.derived(), w0.derived(), set, ctx};
}
template <class GD, class WD, class T>
void mixed_backward(const Eigen::MatrixBase<GD>&, const Eigen::MatrixBase<WD>&, adapter_set<T>&&,
                    const mixed_context<T>&) = delete;

}  // namespace vera
