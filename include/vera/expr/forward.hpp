// SPDX-License-Identifier: Apache-2.0
// vera::forward over Eigen operands: the lazy Y = X W0^T + bias + (X A^T Λd B^T) Λb (vera::detail::forward_expr).
#pragma once

#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/eigen_operands.hpp"
#include "vera/expr/nodes.hpp"
#include "vera/expr/operand.hpp"

namespace vera {

/// \brief Lazy forward of an adapted linear layer on policy `Exec`.
///
/// Shapes: X n x in, W0 out x in (in x out with fan_in_fan_out), bias out (or vera::no_bias);
/// the result is n x out. All operands must have the adapter's scalar type (checked at compile
/// time). A temporary adapter is refused at compile time.
/// \throws shape_error naming the operand when a shape is wrong (when the expression is built).
template <class Exec, class XD, class WD, class Bias, class T,
          class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::forward_expr<Exec, XD, WD, Bias, T> forward(Exec, const Eigen::MatrixBase<XD>& x,
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
detail::forward_expr<exec::default_policy, XD, WD, Bias, T> forward(const Eigen::MatrixBase<XD>& x,
                                                           const Eigen::MatrixBase<WD>& w0,
                                                           const Bias& bias, const adapter<T>& ad) {
  return forward(exec::default_policy{}, x, w0, bias, ad);
}

// An expression must not outlive its adapter: binding a temporary adapter is refused.
template <class XD, class WD, class Bias, class T>
void forward(const Eigen::MatrixBase<XD>&, const Eigen::MatrixBase<WD>&, const Bias&,
             adapter<T>&&) = delete;

}  // namespace vera
