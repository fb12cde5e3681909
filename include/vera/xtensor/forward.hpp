// SPDX-License-Identifier: Apache-2.0
// Forward of an adapted layer on xtensor operands: vera::xt::forward and its CPU evaluator, which
// hands the mapped operands to the Eigen family's forward.
#pragma once

#include <type_traits>
#include <utility>

#include "vera/adapter/adapter.hpp"
#include "vera/backend/cpu/forward.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/forward.hpp"
#include "vera/xtensor/operands.hpp"
#include "vera/xtensor/storage.hpp"

namespace vera::xt {

namespace detail {

/// \brief Evaluates an xtensor forward on a CPU policy into `y` (a row-major map of the
///        destination): X, W0 and the bias mapped (copied once first when not dense row-major),
///        and the Eigen family's forward over the maps, with e's settings, evaluated into y.
template <class Exec, class X, class W, class Bias, class T, class Dst,
          class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::forward_expr<Exec, X, W, Bias, T>& e, Dst& y, assign_mode mode) {
  using S = detail::storage_t<X, T>;
  const detail::input_matrix<S> x(e.x());
  const detail::input_matrix<S> w0(e.w0());
  detail::with_bias<S, T>(e.bias(), [&](const auto& bias) {
    const auto node = vera::forward(Exec{}, x.map(), w0.map(), bias, e.layer()).with_order(e.requested_order());
    const auto trained = e.context() != nullptr ? node.train(*e.context()) : node;
    detail::assign(detail::with_scratch_of(e, trained), y, mode);
  });
}

}  // namespace detail

}  // namespace vera::xt

namespace vera {

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
          class = std::enable_if_t<std::is_empty_v<Exec>>, xt::detail::if_operand<X> = 0>
xt::detail::forward_expr<Exec, X, W, Bias, T> forward(Exec, X&& x, W&& w0, Bias&& bias, const adapter<T>& ad) {
  return {std::forward<X>(x), std::forward<W>(w0), std::forward<Bias>(bias), ad};
}

/// \brief Lazy forward on the default (CPU) policy; as the overload above.
template <class X, class W, class Bias, class T, xt::detail::if_operand<X> = 0>
xt::detail::forward_expr<exec::default_policy, X, W, Bias, T> forward(X&& x, W&& w0, Bias&& bias,
                                                             const adapter<T>& ad) {
  return {std::forward<X>(x), std::forward<W>(w0), std::forward<Bias>(bias), ad};
}

// An expression must not outlive its adapter: binding a temporary adapter is refused.
template <class X, class W, class Bias, class T, xt::detail::if_operand<X> = 0>
void forward(X&&, W&&, Bias&&, adapter<T>&&) = delete;

}  // namespace vera

namespace vera::xt {

/// The operations take xtensor operands as vera::forward; the name is also reachable here.
using vera::forward;

}  // namespace vera::xt
