// SPDX-License-Identifier: Apache-2.0
// vera::parameter_gradients and vera::input_gradient over Eigen operands: the lazy gradients of
// lambda_b and lambda_d, and of the layer input X.
#pragma once

#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/eigen_operands.hpp"
#include "vera/expr/nodes.hpp"

namespace vera {

namespace detail {

/// \brief `grads += parameter_gradients(...)`: accumulates into existing buffers.
/// \throws shape_error when `out` is not sized for the adapter (out, rank).
template <class Exec, class GD, class T>
gradients<T>& operator+=(gradients<T>& out, const parameter_gradient_expr<Exec, GD, T>& e) {
  e.eval_to(out, assign_mode::accumulate);
  return out;
}

}  // namespace detail

/// \brief Lazy gradients of lambda_b and lambda_d on policy `Exec`. Shapes: G n x out, ctx from
///        the training forward of the same n rows; the result is (out, rank).
/// \throws state_error if ctx holds no training forward; shape_error for G of another shape;
///         rank_error when ctx was filled by a forward of another rank.
template <class Exec, class GD, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::parameter_gradient_expr<Exec, GD, T> parameter_gradients(Exec, const Eigen::MatrixBase<GD>& g,
                                                        const adapter<T>& ad,
                                                        const forward_context<T>& ctx) {
  return {g.derived(), ad, ctx};
}
/// \brief Lazy gradients of lambda_b and lambda_d on the default (CPU) policy; as the overload
///        above. A temporary adapter is refused at compile time.
template <class GD, class T>
detail::parameter_gradient_expr<exec::default_policy, GD, T> parameter_gradients(
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
detail::input_gradient_expr<Exec, GD, WD, T> input_gradient(Exec, const Eigen::MatrixBase<GD>& g,
                                                    const Eigen::MatrixBase<WD>& w0,
                                                    const adapter<T>& ad,
                                                    const forward_context<T>& ctx) {
  return {g.derived(), w0.derived(), ad, ctx};
}
/// \brief Lazy gradient of the layer input on the default (CPU) policy; as the overload above.
///        A temporary adapter is refused at compile time.
template <class GD, class WD, class T>
detail::input_gradient_expr<exec::default_policy, GD, WD, T> input_gradient(const Eigen::MatrixBase<GD>& g,
                                                                    const Eigen::MatrixBase<WD>& w0,
                                                                    const adapter<T>& ad,
                                                                    const forward_context<T>& ctx) {
  return {g.derived(), w0.derived(), ad, ctx};
}
template <class GD, class WD, class T>
void input_gradient(const Eigen::MatrixBase<GD>&, const Eigen::MatrixBase<WD>&, adapter<T>&&,
                    const forward_context<T>&) = delete;

}  // namespace vera
