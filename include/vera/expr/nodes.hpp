// SPDX-License-Identifier: Apache-2.0
// The single-adapter expression nodes, written once for every operand family: forward,
// parameter gradients, input gradient, ΔW and W0 + ΔW. A family (Eigen operands here, device
// views in the CUDA backend) says how operands are held and checked and how results reach a
// destination; a node holds its operands and settings and nothing else. Free of Eigen, so that
// the device family shares the nodes without it.
#pragma once

#include "vera/core/shape.hpp"
#include "vera/expr/settings.hpp"

namespace vera {

namespace detail {

/// \brief The Eigen operand family: Eigen matrices and expressions with a vera::adapter, on the
///        host (`vera/expr/eigen_operands.hpp`). The default family of every node.
struct eigen_operands;

/// \brief How results of the nodes reach a family's destinations: one class template (over
///        <Derived, Exec, T>) for each kind of result, a base of the nodes that give it.
template <template <class, class, class> class Matrix, template <class, class, class> class Gradients,
          template <class, class, class> class Delta, template <class, class, class> class Merged>
struct destinations {
  /// Matrix-valued results (forward, input gradient).
  template <class Derived, class Exec, class T>
  using matrix = Matrix<Derived, Exec, T>;
  /// Parameter gradients.
  template <class Derived, class Exec, class T>
  using gradients = Gradients<Derived, Exec, T>;
  /// ΔW: overwrite, merge, unmerge.
  template <class Derived, class Exec, class T>
  using delta = Delta<Derived, Exec, T>;
  /// W0 + ΔW into a separate matrix.
  template <class Derived, class Exec, class T>
  using merged = Merged<Derived, Exec, T>;
};

/// \brief A layer's extents as every family reports them.
struct layer_features {
  index in = 0;  ///< input features
  index out = 0;  ///< output features
  bool fan_in_fan_out = false;  ///< W0 stored in x out

  /// \brief Rows of W0 as stored: out, or in with fan_in_fan_out.
  index stored_rows() const noexcept { return fan_in_fan_out ? in : out; }
  /// \brief Columns of W0 as stored: in, or out with fan_in_fan_out.
  index stored_cols() const noexcept { return fan_in_fan_out ? out : in; }
};

/// \brief What every node holds: its layer, as family F holds it.
template <class T, class F>
class node_layer {
 public:
  /// The layer type of the family: vera::adapter<T>, or the device's layer view.
  using layer_type = typename F::template layer<T>;
  /// The forward context type of the family.
  using context_type = typename F::template context<T>;

  /// \brief The layer.
  const layer_type& layer() const noexcept { return F::layer_of(layer_); }

 protected:
  explicit node_layer(const layer_type& layer) : layer_(F::hold(layer)) {}
  /// \brief The layer's extents.
  layer_features features() const noexcept { return F::features(layer()); }

 private:
  typename F::template layer_holder<T> layer_;
};


/// \brief Y (n x out) = X W0^T + bias + ((drop(X) A^T) Λd) (Λb B)^T, lazily.
///
/// Built by vera::forward. Evaluated into a destination of the family (`Y = expr`,
/// `expr.add_to(Y)` for Eigen; `.eval_to(Y)`, `.add_to(Y)` for device views), which must not share
/// memory with X, W0 or bias. `.train(ctx)` makes it a training forward: dropout applies to the
/// adapter input and P is saved in ctx for backward. The order of the products follows the cost
/// model unless `.with_order()` forces one.
template <class Exec, class XD, class WD, class Bias, class T, class F = detail::eigen_operands>
class forward_expr : public F::results::template matrix<detail::forward_expr<Exec, XD, WD, Bias, T, F>, Exec, T>,
                     public F::template scratch<detail::forward_expr<Exec, XD, WD, Bias, T, F>, T>,
                     public detail::takes_order<detail::forward_expr<Exec, XD, WD, Bias, T, F>>,
                     public detail::trains<detail::forward_expr<Exec, XD, WD, Bias, T, F>, typename F::template context<T>>,
                     public detail::node_layer<T, F> {
 public:
  /// \brief Checks the shapes and keeps the operands; see vera::forward.
  /// \throws shape_error naming X, W0 or bias when its shape does not fit the layer.
  forward_expr(const XD& x, const WD& w0, const Bias& bias, const typename F::template layer<T>& layer)
      : detail::node_layer<T, F>(layer), x_(x), w0_(w0), bias_(bias) {
    F::check_forward(x, w0, bias, layer);
  }

  /// \brief n, the rows of X.
  index rows() const { return F::rows(x_); }
  /// \brief out, the layer's output features.
  index cols() const { return this->features().out; }

  /// \brief X, n x in (as held: see the family's aliasing rule).
  const typename F::template held<XD>& x() const noexcept { return x_; }
  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const typename F::template held<WD>& w0() const noexcept { return w0_; }
  /// \brief The bias (out elements), or the family's "no bias".
  const typename F::template held_bias<Bias>& bias() const noexcept { return bias_; }

 private:
  typename F::template held<XD> x_;
  typename F::template held<WD> w0_;
  typename F::template held_bias<Bias> bias_;
};

/// \brief dL/d lambda_b and dL/d lambda_d from G = dL/dY and the saved context, lazily.
///
/// Built by vera::parameter_gradients; the family says where the gradients go. A frozen vector
/// (train_b / train_d false) gets zero on overwrite and is left as is on accumulate.
template <class Exec, class GD, class T, class F = detail::eigen_operands>
class parameter_gradient_expr : public F::results::template gradients<detail::parameter_gradient_expr<Exec, GD, T, F>, Exec, T>,
                                public F::template scratch<detail::parameter_gradient_expr<Exec, GD, T, F>, T>,
                                public detail::node_layer<T, F> {
  using base = detail::node_layer<T, F>;

 public:
  /// \brief Checks G against the layer and the context; see vera::parameter_gradients.
  /// \throws state_error when ctx holds no training forward; shape_error when G is not n x out
  ///         (n: rows of that forward); rank_error when ctx was filled at another rank.
  parameter_gradient_expr(const GD& g, const typename base::layer_type& layer, const typename base::context_type& ctx)
      : base(layer), g_(g), context_(&ctx) {
    F::check_upstream(g, layer, ctx);
  }

  /// \brief G = dL/dY, n x out.
  const typename F::template held<GD>& upstream() const noexcept { return g_; }
  /// \brief The context of the training forward.
  const typename base::context_type& context() const noexcept { return *context_; }

 private:
  typename F::template held<GD> g_;
  const typename base::context_type* context_;
};

/// \brief dL/dX (n x in) = G (W0 + ΔW), with the dropout mask on the adapter term, lazily.
///
/// Built by vera::input_gradient; evaluated as vera::detail::forward_expr is. The destination must not
/// share memory with G or W0.
template <class Exec, class GD, class WD, class T, class F = detail::eigen_operands>
class input_gradient_expr : public F::results::template matrix<detail::input_gradient_expr<Exec, GD, WD, T, F>, Exec, T>,
                            public F::template scratch<detail::input_gradient_expr<Exec, GD, WD, T, F>, T>,
                            public detail::takes_order<detail::input_gradient_expr<Exec, GD, WD, T, F>>,
                            public detail::node_layer<T, F> {
  using base = detail::node_layer<T, F>;

 public:
  /// \brief Checks G, W0 and the context; see vera::input_gradient.
  /// \throws state_error when ctx holds no training forward; shape_error when G is not n x out or
  ///         W0 does not fit the layer; rank_error when ctx was filled at another rank.
  input_gradient_expr(const GD& g, const WD& w0, const typename base::layer_type& layer,
                      const typename base::context_type& ctx)
      : base(layer), g_(g), w0_(w0), context_(&ctx) {
    F::check_input_gradient(g, w0, layer, ctx);
  }

  /// \brief n, the rows of G.
  index rows() const { return F::rows(g_); }
  /// \brief in, the layer's input features.
  index cols() const { return this->features().in; }

  /// \brief G = dL/dY, n x out.
  const typename F::template held<GD>& upstream() const noexcept { return g_; }
  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const typename F::template held<WD>& w0() const noexcept { return w0_; }
  /// \brief The context of the training forward.
  const typename base::context_type& context() const noexcept { return *context_; }

 private:
  typename F::template held<GD> g_;
  typename F::template held<WD> w0_;
  const typename base::context_type* context_;
};

/// \brief ΔW = Λb B Λd A (out x in; in x out with fan_in_fan_out), lazily.
///
/// Built by vera::delta_weight. Overwriting a destination writes ΔW; `.add_to(W)` is a merge and
/// `.subtract_from(W)` an unmerge, each one GEMM into W with no temporary of W's size.
template <class Exec, class T, class F = detail::eigen_operands>
class delta_weight_expr : public F::results::template delta<detail::delta_weight_expr<Exec, T, F>, Exec, T>,
                          public F::template scratch<detail::delta_weight_expr<Exec, T, F>, T>,
                          public detail::node_layer<T, F> {
 public:
  /// \brief Checks the layer and refers to it; see vera::delta_weight.
  explicit delta_weight_expr(const typename F::template layer<T>& layer) : detail::node_layer<T, F>(layer) {
    F::check_layer(layer);
  }

  /// \brief out (in with fan_in_fan_out).
  index rows() const { return this->features().stored_rows(); }
  /// \brief in (out with fan_in_fan_out).
  index cols() const { return this->features().stored_cols(); }
};

/// \brief W0 + ΔW into a separate matrix of W0's shape, lazily; W0 is left as it is.
///
/// Built by vera::merged_weight; the destination must not share memory with W0.
template <class Exec, class WD, class T, class F = detail::eigen_operands>
class merged_weight_expr : public F::results::template merged<detail::merged_weight_expr<Exec, WD, T, F>, Exec, T>,
                           public F::template scratch<detail::merged_weight_expr<Exec, WD, T, F>, T>,
                           public detail::node_layer<T, F> {
 public:
  /// \brief Checks W0 against the layer; see vera::merged_weight.
  /// \throws shape_error when W0 is not out x in (in x out with fan_in_fan_out).
  merged_weight_expr(const WD& w0, const typename F::template layer<T>& layer)
      : detail::node_layer<T, F>(layer), w0_(w0) {
    F::check_layer(layer);
    F::check_base_weight(w0, layer);
  }

  /// \brief Rows of W0.
  index rows() const { return F::rows(w0_); }
  /// \brief Columns of W0.
  index cols() const { return F::cols(w0_); }

  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const typename F::template held<WD>& w0() const noexcept { return w0_; }

 private:
  typename F::template held<WD> w0_;
};

}  // namespace detail

}  // namespace vera
