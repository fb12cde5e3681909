// SPDX-License-Identifier: Apache-2.0
// ΔW, merged weight, merge/unmerge/safe merge on an xtensor W0: the factories, the CPU evaluators
// (through the Eigen family's merge expressions) and the in-place operations.
#pragma once

#include <type_traits>
#include <utility>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/backend/cpu/merge.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/merge.hpp"
#include "vera/xtensor/operands.hpp"
#include "vera/xtensor/storage.hpp"

namespace vera::xt {

namespace detail {

/// \brief Evaluates an xtensor ΔW on a CPU policy into `dst` (a row-major map of the
///        destination): written on overwrite, added with `sign` on accumulate (1: merge, -1:
///        unmerge), by the Eigen family's ΔW with e's workspace.
template <class Exec, class T, class Dst, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::delta_weight_expr<Exec, T>& e, Dst& dst, assign_mode mode, T sign = T(1)) {
  const T keep = mode == assign_mode::accumulate ? T(1) : T(0);
  evaluate(Exec{}, detail::with_scratch_of(e, vera::detail::delta_weight_expr<Exec, T>(e.layer())), dst, keep, sign);
}

/// \brief Evaluates an xtensor W0 + ΔW on a CPU policy into `dst` (a row-major map of the
///        destination): W0 mapped (copied once first when not dense row-major), and the Eigen
///        family's merged weight over the map, with e's workspace, evaluated into dst.
template <class Exec, class W, class T, class Dst, class = std::enable_if_t<exec::is_cpu_policy<Exec>>>
void evaluate(Exec, const detail::merged_weight_expr<Exec, W, T>& e, Dst& dst, assign_mode) {
  const detail::input_matrix<detail::storage_t<W, T>> w0(e.w0());
  detail::with_scratch_of(e, vera::merged_weight<Exec>(w0.map(), e.layer())).evalTo(dst);
}

}  // namespace detail

/// \brief Lazy ΔW of `ad` on policy Exec (default: CPU).
template <class Exec = exec::default_policy, class T>
detail::delta_weight_expr<Exec, T> delta_weight(const adapter<T>& ad) {
  return detail::delta_weight_expr<Exec, T>(ad);
}

// An expression must not outlive its adapter: binding a temporary adapter is refused.
template <class Exec = exec::default_policy, class T>
void delta_weight(adapter<T>&&) = delete;

namespace detail {

/// W0 as the in-place operations need it: 2-D, dense row-major, the adapter's layout, in T or
/// (for a float adapter) bfloat16.
template <class T, class W>
auto writable_weight(W& w0, const adapter<T>& ad) {
  static_assert(holds_storage_for<W, T>,
                "vera::xt::merge, unmerge, safe_merge: W0 must hold the adapter's scalar type (or "
                "bfloat16 for a float adapter)");
  using S = storage_t<W, T>;
  check_dimension<2>("W0", w0);
  vera::detail::check_base_weight("W0", shape_only<S>(w0), ad);
  return writable<S>("W0", w0, extent(w0, 0), extent(w0, 1));
}

}  // namespace detail

}  // namespace vera::xt

namespace vera {

/// \brief Lazy W0 + ΔW from an xtensor W0. Shapes: W0 as in vera::xt::forward.
/// \throws shape_error when W0 is not 2-D or not the adapter's shape.
template <class Exec = exec::default_policy, class W, class T, xt::detail::if_operand<W> = 0>
xt::detail::merged_weight_expr<Exec, W, T> merged_weight(W&& w0, const adapter<T>& ad) {
  return {std::forward<W>(w0), ad};
}
// An expression must not outlive its adapter: binding a temporary adapter is refused.
template <class Exec = exec::default_policy, class W, class T, xt::detail::if_operand<W> = 0>
void merged_weight(W&&, adapter<T>&&) = delete;

/// \brief W0 += ΔW in place. W0 (out x in, in x out with fan_in_fan_out) must be dense
///        row-major memory: an xt::xtensor, xt::xarray, adaptor or contiguous view, of the
///        adapter's T or (float adapter) bfloat16, merged as vera::merge merges it.
///        `ws` (optional) avoids allocating.
/// \throws shape_error when W0 is not 2-D, of another shape, or not dense row-major.
template <class W, class T, xt::detail::if_operand<W> = 0>
void merge(W&& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  auto w = xt::detail::writable_weight(w0, ad);
  vera::merge(w, ad, ws);
}

/// \brief W0 -= ΔW in place; undoes merge up to rounding. W0 as in vera::xt::merge.
/// \throws shape_error as vera::xt::merge.
template <class W, class T, xt::detail::if_operand<W> = 0>
void unmerge(W&& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  auto w = xt::detail::writable_weight(w0, ad);
  vera::unmerge(w, ad, ws);
}

/// \brief W0 += ΔW only if every merged element is finite; otherwise throws value_error and
///        leaves W0 untouched. W0 as in vera::xt::merge.
/// \throws shape_error as vera::xt::merge; value_error for a non-finite merged element.
template <class W, class T, xt::detail::if_operand<W> = 0>
void safe_merge(W&& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  auto w = xt::detail::writable_weight(w0, ad);
  vera::safe_merge(w, ad, ws);
}

}  // namespace vera

namespace vera::xt {

/// The operations take xtensor operands as vera::merged_weight, vera::merge, vera::unmerge and
/// vera::safe_merge; the names are also reachable here.
using vera::merge;
using vera::merged_weight;
using vera::safe_merge;
using vera::unmerge;

}  // namespace vera::xt
