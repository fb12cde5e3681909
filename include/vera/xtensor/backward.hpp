// SPDX-License-Identifier: Apache-2.0
// Backward of an adapted layer on xtensor operands: vera::xt::parameter_gradients and
// input_gradient, and their CPU evaluators, which hand the mapped operands to the Eigen family.
#pragma once

#include <type_traits>
#include <utility>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/backend/cpu/backward.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/backward.hpp"
#include "vera/xtensor/gradients.hpp"
#include "vera/xtensor/operands.hpp"
#include "vera/xtensor/storage.hpp"

namespace vera::xt {

namespace detail {

/// \brief Evaluates xtensor parameter gradients on a CPU policy into `out`: G mapped (copied
///        once first when not dense row-major), and the Eigen family's parameter gradients over
///        the map, with e's workspace, evaluated into out's vera::gradients.
template <class Exec, class G, class T, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::parameter_gradient_expr<Exec, G, T>& e, gradients<T>& out, assign_mode mode) {
  const detail::input_matrix<detail::storage_t<G, T>> g(e.upstream());
  const auto node = vera::parameter_gradients(Exec{}, g.map(), e.layer(), e.context());
  detail::with_scratch_of(e, node).eval_to(out.eigen(), mode);
}

/// \brief Evaluates an xtensor input gradient on a CPU policy into `dx` (a row-major map of the
///        destination): G and W0 mapped, and the Eigen family's input gradient over the maps,
///        with e's settings, evaluated into dx.
template <class Exec, class G, class W, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::input_gradient_expr<Exec, G, W, T>& e, Dst& dx, assign_mode mode) {
  using S = detail::storage_t<G, T>;
  const detail::input_matrix<S> g(e.upstream());
  const detail::input_matrix<S> w0(e.w0());
  const auto node = vera::input_gradient(Exec{}, g.map(), w0.map(), e.layer(), e.context());
  detail::assign(detail::with_scratch_of(e, node.with_order(e.requested_order())), dx, mode);
}

}  // namespace detail

}  // namespace vera::xt

namespace vera {

/// \brief Lazy gradients of lambda_b and lambda_d. Shapes: G n x out (2-D), ctx from the
///        training forward of the same n rows. A temporary adapter is refused at compile time.
/// \throws state_error if ctx holds no training forward; shape_error for a G that is not 2-D
///         n x out; rank_error when ctx was filled at another rank.
template <class Exec, class G, class T, class = std::enable_if_t<std::is_empty_v<Exec>>,
          xt::detail::if_operand<G> = 0>
xt::detail::parameter_gradient_expr<Exec, G, T> parameter_gradients(Exec, G&& g, const adapter<T>& ad,
                                                            const forward_context<T>& ctx) {
  return {std::forward<G>(g), ad, ctx};
}
/// \brief Lazy gradients on the default (CPU) policy; as the overload above.
template <class G, class T, xt::detail::if_operand<G> = 0>
xt::detail::parameter_gradient_expr<exec::default_policy, G, T> parameter_gradients(
    G&& g, const adapter<T>& ad, const forward_context<T>& ctx) {
  return {std::forward<G>(g), ad, ctx};
}
template <class G, class T, xt::detail::if_operand<G> = 0>
void parameter_gradients(G&&, adapter<T>&&, const forward_context<T>&) = delete;

/// \brief Lazy gradient of the layer input (n x in). Shapes: G n x out, W0 as in
///        vera::xt::forward. A temporary adapter is refused at compile time.
/// \throws as vera::xt::parameter_gradients; shape_error also for W0.
template <class Exec, class G, class W, class T, class = std::enable_if_t<std::is_empty_v<Exec>>,
          xt::detail::if_operand<G> = 0>
xt::detail::input_gradient_expr<Exec, G, W, T> input_gradient(Exec, G&& g, W&& w0, const adapter<T>& ad,
                                                      const forward_context<T>& ctx) {
  return {std::forward<G>(g), std::forward<W>(w0), ad, ctx};
}
/// \brief Lazy gradient of the layer input on the default (CPU) policy; as the overload above.
template <class G, class W, class T, xt::detail::if_operand<G> = 0>
xt::detail::input_gradient_expr<exec::default_policy, G, W, T> input_gradient(G&& g, W&& w0,
                                                                      const adapter<T>& ad,
                                                                      const forward_context<T>& ctx) {
  return {std::forward<G>(g), std::forward<W>(w0), ad, ctx};
}
template <class G, class W, class T, xt::detail::if_operand<G> = 0>
void input_gradient(G&&, W&&, adapter<T>&&, const forward_context<T>&) = delete;

}  // namespace vera

namespace vera::xt {

/// The operations take xtensor operands as vera::parameter_gradients and vera::input_gradient;
/// the names are also reachable here.
using vera::input_gradient;
using vera::parameter_gradients;

}  // namespace vera::xt
