// SPDX-License-Identifier: Apache-2.0
// Lazy backward expressions: gradients of lambda_b and lambda_d, and of the layer input X.
#pragma once

#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/assignable.hpp"
#include "vera/expr/cost.hpp"
#include "vera/expr/forward.hpp"
#include "vera/expr/settings.hpp"
#include "vera/expr/operand.hpp"

namespace vera {

template <class Exec, class GD, class T>
class parameter_gradient_expr;
template <class Exec, class GD, class WD, class T>
class input_gradient_expr;

}  // namespace vera

namespace Eigen::internal {
template <class Exec, class GD, class WD, class T>
struct traits<vera::input_gradient_expr<Exec, GD, WD, T>> {
  using ReturnType = Eigen::Matrix<vera::detail::result_scalar_t<GD, T>, Eigen::Dynamic, Eigen::Dynamic>;
};
}  // namespace Eigen::internal

namespace vera {

namespace detail {

template <class GD, class T>
void check_upstream(const GD& g, const adapter<T>& ad, const forward_context<T>& ctx) {
  if (!ctx.ready()) {
    throw state_error("vera backward: the forward context holds no training forward; evaluate "
                      "vera::forward(...).train(ctx) first");
  }
  vera::detail::check_cols("G", ad.out_features(), g.cols(), "the layer's out_features");
  vera::detail::check_rows("G", ctx.rows(), g.rows(), "rows of the training forward");
  if (ctx.projected().cols() != ad.rank()) {
    throw rank_error("forward context: holds rank " + std::to_string(ctx.projected().cols()) +
                     ", the adapter has rank " + std::to_string(ad.rank()));
  }
}

// Gradient buffers: empty ones (a default-constructed gradients<T>) are sized on overwrite, so
// the answer is true; buffers of another size throw shape_error naming the operand, which
// `name()` spells only then (no string is built on the normal path).
template <class T, class Name>
bool gradient_buffers_need_sizing(const gradients<T>& out, const adapter<T>& ad, assign_mode mode, Name&& name) {
  if (mode == assign_mode::overwrite && out.lambda_b.size() == 0 && out.lambda_d.size() == 0) return true;
  if (out.lambda_b.size() != ad.out_features()) {
    vera::detail::check_size((name() + ".lambda_b").c_str(), ad.out_features(), out.lambda_b.size());
  }
  if (out.lambda_d.size() != ad.rank()) {
    vera::detail::check_size((name() + ".lambda_d").c_str(), ad.rank(), out.lambda_d.size());
  }
  return false;
}

}  // namespace detail

/// \brief dL/d lambda_b and dL/d lambda_d from G = dL/dY and the saved context, lazily.
///
/// `grads = expr;` overwrites, `grads += expr;` accumulates (gradients<T> has both). A frozen
/// vector (train_b / train_d false) gets zero on overwrite and is left as is on accumulate.
template <class Exec, class GD, class T>
class parameter_gradient_expr : public uses_workspace<parameter_gradient_expr<Exec, GD, T>, T> {
  static_assert(vera::detail::storage_matches<GD, T>,
                "vera::parameter_gradients: G must have the adapter's scalar type (or bfloat16 for a float adapter)");

 public:
  /// \brief Checks G against the adapter and the context; see vera::parameter_gradients.
  /// \throws state_error when ctx holds no training forward; shape_error when G is not n x out
  ///         (n: rows of that forward); rank_error when ctx was filled at another rank.
  parameter_gradient_expr(const GD& g, const adapter<T>& ad, const forward_context<T>& ctx)
      : g_(g), adapter_(&ad), context_(&ctx) {
    detail::check_upstream(g, ad, ctx);
  }

  /// \brief Writes (or adds) the gradients into `out`. On overwrite, empty buffers (a
  ///        default-constructed gradients<T>) are sized; buffers of another size throw
  ///        shape_error rather than being reallocated under whoever holds their address (an
  ///        optimizer, a gradient bucket).
  void eval_to(gradients<T>& out, assign_mode mode = assign_mode::overwrite) const {
    if (detail::gradient_buffers_need_sizing(out, *adapter_, mode, [] { return std::string("gradients"); })) {
      out.lambda_b.resize(adapter_->out_features());
      out.lambda_d.resize(adapter_->rank());
    }
    evaluate(Exec{}, *this, out, mode);
  }

  /// \brief Evaluates into a fresh gradients<T>.
  gradients<T> eval() const {
    gradients<T> out;
    eval_to(out);
    return out;
  }
  /// \brief Evaluates into a fresh gradients<T>, for `gradients<T> g = expr;`.
  operator gradients<T>() const { return eval(); }  // NOLINT: evaluation on conversion is the point

  /// \brief G = dL/dY, n x out.
  const detail::closure_t<GD>& upstream() const noexcept { return g_; }
  /// \brief The adapter.
  const adapter<T>& layer() const noexcept { return *adapter_; }
  /// \brief The context of the training forward.
  const forward_context<T>& context() const noexcept { return *context_; }

 private:
  detail::closure_t<GD> g_;
  const adapter<T>* adapter_;
  const forward_context<T>* context_;
};

/// \brief `grads += parameter_gradients(...)`: accumulates into existing buffers.
/// \throws shape_error when `out` is not sized for the adapter (out, rank).
template <class Exec, class GD, class T>
gradients<T>& operator+=(gradients<T>& out, const parameter_gradient_expr<Exec, GD, T>& e) {
  e.eval_to(out, assign_mode::accumulate);
  return out;
}

/// \brief dL/dX (n x in) = G (W0 + ΔW), with the dropout mask on the adapter term, lazily.
///
/// `dX = expr;` overwrites; `expr.add_to(dX)` accumulates without a temporary. The destination
/// must not share memory with G or W0.
template <class Exec, class GD, class WD, class T>
class input_gradient_expr : public assignable<input_gradient_expr<Exec, GD, WD, T>, Exec>,
                            public uses_workspace<input_gradient_expr<Exec, GD, WD, T>, T>,
                            public takes_order<input_gradient_expr<Exec, GD, WD, T>> {
  static_assert(vera::detail::storage_matches<GD, T>,
                "vera::input_gradient: G must have the adapter's scalar type (or bfloat16 for a float adapter)");
  static_assert(std::is_same_v<typename GD::Scalar, typename WD::Scalar>,
                "vera::input_gradient: G and W0 must have the same scalar type");

 public:
  /// \brief Checks G, W0 and the context; see vera::input_gradient.
  /// \throws state_error when ctx holds no training forward; shape_error when G is not n x out or
  ///         W0 does not fit the adapter; rank_error when ctx was filled at another rank.
  input_gradient_expr(const GD& g, const WD& w0, const adapter<T>& ad, const forward_context<T>& ctx)
      : g_(g), w0_(w0), adapter_(&ad), context_(&ctx) {
    detail::check_upstream(g, ad, ctx);
    detail::check_base_weight("W0", w0, ad);
  }

  /// \brief n, the rows of G.
  Eigen::Index rows() const { return g_.rows(); }
  /// \brief in, the layer's input features.
  Eigen::Index cols() const { return adapter_->in_features(); }

  /// \brief G = dL/dY, n x out.
  const detail::closure_t<GD>& upstream() const noexcept { return g_; }
  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const detail::closure_t<WD>& w0() const noexcept { return w0_; }
  /// \brief The adapter.
  const adapter<T>& layer() const noexcept { return *adapter_; }
  /// \brief The context of the training forward.
  const forward_context<T>& context() const noexcept { return *context_; }

 private:
  detail::closure_t<GD> g_;
  detail::closure_t<WD> w0_;
  const adapter<T>* adapter_;
  const forward_context<T>* context_;
};

/// \brief Lazy gradients of lambda_b and lambda_d on policy `Exec`. Shapes: G n x out, ctx from
///        the training forward of the same n rows; the result is (out, rank).
/// \throws state_error if ctx holds no training forward; shape_error for G of another shape;
///         rank_error when ctx was filled by a forward of another rank.
template <class Exec, class GD, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
parameter_gradient_expr<Exec, GD, T> parameter_gradients(Exec, const Eigen::MatrixBase<GD>& g,
                                                        const adapter<T>& ad,
                                                        const forward_context<T>& ctx) {
  return {g.derived(), ad, ctx};
}
/// \brief Lazy gradients of lambda_b and lambda_d on the default (CPU) policy; as the overload
///        above. A temporary adapter is refused at compile time.
template <class GD, class T>
parameter_gradient_expr<exec::default_policy, GD, T> parameter_gradients(
    const Eigen::MatrixBase<GD>& g, const adapter<T>& ad, const forward_context<T>& ctx) {
  return {g.derived(), ad, ctx};
}
template <class GD, class T>
void parameter_gradients(const Eigen::MatrixBase<GD>&, adapter<T>&&, const forward_context<T>&) = delete;

/// \brief Lazy gradient of the layer input on policy `Exec`. Shapes: G n x out, W0 as in
///        vera::forward; the result dX is n x in.
/// \throws state_error if ctx holds no training forward; shape_error for G or W0 of another
///         shape; rank_error when ctx was filled by a forward of another rank.
template <class Exec, class GD, class WD, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
input_gradient_expr<Exec, GD, WD, T> input_gradient(Exec, const Eigen::MatrixBase<GD>& g,
                                                    const Eigen::MatrixBase<WD>& w0,
                                                    const adapter<T>& ad,
                                                    const forward_context<T>& ctx) {
  return {g.derived(), w0.derived(), ad, ctx};
}
/// \brief Lazy gradient of the layer input on the default (CPU) policy; as the overload above.
///        A temporary adapter is refused at compile time.
template <class GD, class WD, class T>
input_gradient_expr<exec::default_policy, GD, WD, T> input_gradient(const Eigen::MatrixBase<GD>& g,
                                                                    const Eigen::MatrixBase<WD>& w0,
                                                                    const adapter<T>& ad,
                                                                    const forward_context<T>& ctx) {
  return {g.derived(), w0.derived(), ad, ctx};
}
template <class GD, class WD, class T>
void input_gradient(const Eigen::MatrixBase<GD>&, const Eigen::MatrixBase<WD>&, adapter<T>&&,
                    const forward_context<T>&) = delete;

}  // namespace vera
