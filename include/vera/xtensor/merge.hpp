// SPDX-License-Identifier: Apache-2.0
// ΔW, merged weight, merge/unmerge/safe merge on an xtensor W0, via the shared merge expressions.
#pragma once

#include <type_traits>
#include <utility>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/backend/cpu/merge.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/merge.hpp"
#include "vera/xtensor/modifiers.hpp"
#include "vera/xtensor/result.hpp"
#include "vera/xtensor/storage.hpp"

namespace vera::xt {

/// \brief ΔW = Λb B Λd A (out x in; in x out with fan_in_fan_out) as an xtensor, lazily.
///
/// `eval()`, conversion and `assign_to(w)` overwrite; `add_to(w)` is a merge and
/// `subtract_from(w)` an unmerge, one GEMM into w with no temporary of w's size (for both, w
/// must have ΔW's shape and be dense row-major, or shape_error is thrown). `rows()` is out and
/// `cols()` in (swapped with fan_in_fan_out). `eval()`, the conversion, `assign_to()`, `add_to()`
/// and the shape come from an internal base, as for vera::xt::forward_expr. `eval()` gives the
/// adapter's T; for a float adapter, `assign_to`, `add_to` and `subtract_from` also take a
/// bfloat16 w, which gets PEFT's bfloat16 merge (ΔW and the sum in float32, rounded once).
template <class Exec, class T>
class delta_weight_expr
    : public detail::checked_matrix_result<delta_weight_expr<Exec, T>, vera::delta_weight_expr<Exec, T>,
                                           detail::narrow_storage_t<T>> {
  using result = detail::checked_matrix_result<delta_weight_expr, vera::delta_weight_expr<Exec, T>,
                                               detail::narrow_storage_t<T>>;
  using modifiers = detail::modifiers_of<delta_weight_expr, vera::delta_weight_expr<Exec, T>>;

 public:
  /// \brief Refers to `ad`, which must outlive the expression; see vera::xt::delta_weight.
  explicit delta_weight_expr(const adapter<T>& ad) : result(vera::delta_weight_expr<Exec, T>(ad)) {}

  /// \brief w -= ΔW; w must have ΔW's shape and be dense row-major, and hold T (or bfloat16
  ///        for a float adapter).
  /// \throws shape_error otherwise.
  template <class Y>
  void subtract_from(Y&& w) const {
    using S = detail::storage_t<Y, T>;
    static_assert(detail::holds_storage_for<Y, T>,
                  "vera::xt::delta_weight: w must hold the adapter's scalar type (or bfloat16 for a "
                  "float adapter)");
    auto dst = detail::writable<S>("destination", w, this->rows(), this->cols());
    this->checked().subtract_from(dst);
  }

 private:
  friend typename result::evaluation;
  friend modifiers;

  // ΔW has no operands of its own: the expression over the adapter is the whole state.
  delta_weight_expr(const delta_weight_expr&, const vera::delta_weight_expr<Exec, T>& delta)
      : result(delta) {}

  template <class Dst>
  void run(Dst& dst, assign_mode mode) const {
    detail::assign(this->checked(), dst, mode);
  }
};

/// \brief W0 + ΔW as an xtensor, lazily; W0 has the layout the adapter's options say.
///
/// Evaluated through `eval()`, the conversion or `assign_to(w)`, as vera::xt::forward_expr;
/// the result holds W0's scalar (a bfloat16 W0 with a float adapter gives PEFT's bfloat16 merge).
/// Evaluation throws aliasing_error when the destination overlaps W0.
template <class Exec, class W, class T>
class merged_weight_expr : public detail::matrix_result<merged_weight_expr<Exec, W, T>,
                                                        detail::storage_t<W, T>> {
  static_assert(detail::holds_storage_for<W, T>,
                "vera::xt::merged_weight: W0 must hold the adapter's scalar type (or bfloat16 for a "
                "float adapter)");

  using S = detail::storage_t<W, T>;

 public:
  /// \brief Holds W0 and checks it against the adapter; see vera::xt::merged_weight.
  /// \throws shape_error when W0 is not 2-D or not the adapter's shape.
  template <class WA>
  merged_weight_expr(WA&& w0, const adapter<T>& ad) : w0_(std::forward<WA>(w0)), adapter_(&ad) {
    detail::check_dimension<2>("W0", w0_);
    (void)vera::merged_weight<Exec>(detail::shape_only<S>(w0_), ad);
  }

  /// \brief Rows of W0.
  index rows() const { return detail::extent(w0_, 0); }
  /// \brief Columns of W0.
  index cols() const { return detail::extent(w0_, 1); }

 private:
  friend class detail::matrix_result<merged_weight_expr, S>;

  template <class Dst>
  void run(Dst& dst, assign_mode) const {
    const detail::input_matrix<S> w0(w0_);
    vera::merged_weight<Exec>(w0.map(), *adapter_).evalTo(dst);
  }

  detail::closure_t<W> w0_;
  const adapter<T>* adapter_;
};

/// \brief Lazy ΔW of `ad` on policy Exec (default: CPU).
template <class Exec = exec::default_policy, class T>
delta_weight_expr<Exec, T> delta_weight(const adapter<T>& ad) {
  return delta_weight_expr<Exec, T>(ad);
}

/// \brief Lazy W0 + ΔW. Shapes: W0 as in vera::xt::forward.
/// \throws shape_error when W0 is not 2-D or not the adapter's shape.
template <class Exec = exec::default_policy, class W, class T>
merged_weight_expr<Exec, W, T> merged_weight(W&& w0, const adapter<T>& ad) {
  return {std::forward<W>(w0), ad};
}

// An expression must not outlive its adapter: binding a temporary adapter is refused.
template <class Exec = exec::default_policy, class T>
void delta_weight(adapter<T>&&) = delete;
template <class Exec = exec::default_policy, class W, class T>
void merged_weight(W&&, adapter<T>&&) = delete;

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

/// \brief W0 += ΔW in place. W0 (out x in, in x out with fan_in_fan_out) must be dense
///        row-major memory: an xt::xtensor, xt::xarray, adaptor or contiguous view, of the
///        adapter's T or (float adapter) bfloat16, merged as vera::merge merges it.
///        `ws` (optional) avoids allocating.
/// \throws shape_error when W0 is not 2-D, of another shape, or not dense row-major.
template <class W, class T>
void merge(W&& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  auto w = detail::writable_weight(w0, ad);
  vera::merge(w, ad, ws);
}

/// \brief W0 -= ΔW in place; undoes merge up to rounding. W0 as in vera::xt::merge.
/// \throws shape_error as vera::xt::merge.
template <class W, class T>
void unmerge(W&& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  auto w = detail::writable_weight(w0, ad);
  vera::unmerge(w, ad, ws);
}

/// \brief W0 += ΔW only if every merged element is finite; otherwise throws value_error and
///        leaves W0 untouched. W0 as in vera::xt::merge.
/// \throws shape_error as vera::xt::merge; value_error for a non-finite merged element.
template <class W, class T>
void safe_merge(W&& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  auto w = detail::writable_weight(w0, ad);
  vera::safe_merge(w, ad, ws);
}

}  // namespace vera::xt
