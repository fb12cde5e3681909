// SPDX-License-Identifier: Apache-2.0
// Lazy forward expression Y = X W0^T + bias + (X A^T Λd B^T) Λb, evaluated on assignment.
#pragma once

#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/assignable.hpp"
#include "vera/expr/cost.hpp"
#include "vera/expr/operand.hpp"
#include "vera/expr/settings.hpp"

namespace vera {

template <class Exec, class XD, class WD, class Bias, class T>
class forward_expr;

}  // namespace vera

namespace Eigen::internal {
template <class Exec, class XD, class WD, class Bias, class T>
struct traits<vera::forward_expr<Exec, XD, WD, Bias, T>> {
  using ReturnType = Eigen::Matrix<vera::detail::result_scalar_t<XD, T>, Eigen::Dynamic, Eigen::Dynamic>;
};
}  // namespace Eigen::internal

namespace vera {

namespace detail {

template <class Bias>
struct bias_closure {
  using type = closure_t<Bias>;
};
template <>
struct bias_closure<no_bias_t> {
  using type = no_bias_t;
};
template <class Bias>
using bias_closure_t = typename bias_closure<Bias>::type;

template <class Bias>
index bias_size(const Bias& bias) {
  if constexpr (std::is_same_v<Bias, no_bias_t>) {
    return -1;
  } else {
    return bias.size();
  }
}

// W0 is out x in, or in x out when the layer stores it transposed (fan_in_fan_out).
template <class WD, class T>
void check_base_weight(const char* operand, const WD& w0, const adapter<T>& ad) {
  const index out = ad.out_features();
  const index in = ad.in_features();
  if (ad.options().fan_in_fan_out) {
    vera::detail::check_shape(operand, in, out, w0.rows(), w0.cols());
  } else {
    vera::detail::check_shape(operand, out, in, w0.rows(), w0.cols());
  }
}

}  // namespace detail

/// \brief Y (n x out) = X W0^T + bias + ((X A^T) Λd) (Λb B)^T, lazily.
///
/// Assigning it to an Eigen matrix (`Y = expr;`) evaluates it straight into Y, which must not
/// share memory with X, W0 or bias (see check_no_alias). `.train(ctx)` makes it a training forward:
/// dropout applies to the adapter input and P is saved in ctx for backward. The order of the
/// products follows the cost model unless `.with_order()` forces one.
template <class Exec, class XD, class WD, class Bias, class T>
class forward_expr : public assignable<forward_expr<Exec, XD, WD, Bias, T>, Exec>,
                     public uses_workspace<forward_expr<Exec, XD, WD, Bias, T>, T>,
                     public takes_order<forward_expr<Exec, XD, WD, Bias, T>>,
                     public trains<forward_expr<Exec, XD, WD, Bias, T>, forward_context<T>> {
  static_assert(vera::detail::storage_matches<XD, T>,
                "vera::forward: X must have the adapter's scalar type (or bfloat16 for a float adapter)");
  static_assert(std::is_same_v<typename XD::Scalar, typename WD::Scalar>,
                "vera::forward: X and W0 must have the same scalar type");

 public:
  /// \brief Checks the shapes and keeps the operands; see vera::forward.
  /// \throws shape_error naming X, W0 or bias when its shape does not fit the adapter.
  forward_expr(const XD& x, const WD& w0, const Bias& bias, const adapter<T>& ad)
      : x_(x), w0_(w0), bias_(bias), adapter_(&ad) {
    vera::detail::check_cols("X", ad.in_features(), x.cols(), "the layer's in_features");
    detail::check_base_weight("W0", w0, ad);
    if constexpr (!std::is_same_v<Bias, no_bias_t>) {
      static_assert(vera::detail::storage_matches<Bias, T>, "vera::forward: bias must have the adapter's scalar type (or bfloat16)");
      static_assert(Bias::RowsAtCompileTime == 1 || Bias::ColsAtCompileTime == 1,
                    "vera::forward: bias must be a vector (out elements)");
      vera::detail::check_size("bias", ad.out_features(), bias.size());
    }
  }

  /// \brief n, the rows of X.
  Eigen::Index rows() const { return x_.rows(); }
  /// \brief out, the layer's output features.
  Eigen::Index cols() const { return adapter_->out_features(); }

  /// \brief X, n x in (as held: by reference or by value, see the aliasing rule).
  const detail::closure_t<XD>& x() const noexcept { return x_; }
  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const detail::closure_t<WD>& w0() const noexcept { return w0_; }
  /// \brief The bias (out elements) or vera::no_bias.
  const detail::bias_closure_t<Bias>& bias() const noexcept { return bias_; }
  /// \brief The adapter.
  const adapter<T>& layer() const noexcept { return *adapter_; }

 private:
  detail::closure_t<XD> x_;
  detail::closure_t<WD> w0_;
  detail::bias_closure_t<Bias> bias_;
  const adapter<T>* adapter_;
};

/// \brief Lazy forward of an adapted linear layer on policy `Exec`.
///
/// Shapes: X n x in, W0 out x in (in x out with fan_in_fan_out), bias out (or vera::no_bias);
/// the result is n x out. All operands must have the adapter's scalar type (checked at compile
/// time). A temporary adapter is refused at compile time.
/// \throws shape_error naming the operand when a shape is wrong (when the expression is built).
template <class Exec, class XD, class WD, class Bias, class T,
          class = std::enable_if_t<std::is_empty_v<Exec>>>
forward_expr<Exec, XD, WD, Bias, T> forward(Exec, const Eigen::MatrixBase<XD>& x,
                                           const Eigen::MatrixBase<WD>& w0, const Bias& bias,
                                           const adapter<T>& ad) {
  if constexpr (std::is_same_v<Bias, no_bias_t>) {
    return {x.derived(), w0.derived(), bias, ad};
  } else {
    return {x.derived(), w0.derived(), bias.derived(), ad};
  }
}

/// \brief Lazy forward on the default (CPU) policy.
template <class XD, class WD, class Bias, class T>
forward_expr<exec::default_policy, XD, WD, Bias, T> forward(const Eigen::MatrixBase<XD>& x,
                                                           const Eigen::MatrixBase<WD>& w0,
                                                           const Bias& bias, const adapter<T>& ad) {
  return forward(exec::default_policy{}, x, w0, bias, ad);
}

// An expression must not outlive its adapter: binding a temporary adapter is refused.
template <class XD, class WD, class Bias, class T>
void forward(const Eigen::MatrixBase<XD>&, const Eigen::MatrixBase<WD>&, const Bias&,
             adapter<T>&&) = delete;

}  // namespace vera
