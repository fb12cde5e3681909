// SPDX-License-Identifier: Apache-2.0
// Lazy delta weight ΔW = Λb B Λd A and merged weight W0 + ΔW; in-place merge, unmerge, safe merge.
#pragma once

#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/forward.hpp"
#include "vera/expr/operand.hpp"
#include "vera/expr/settings.hpp"

namespace vera {

template <class Exec, class T>
class delta_weight_expr;
template <class Exec, class WD, class T>
class merged_weight_expr;

}  // namespace vera

namespace Eigen::internal {
template <class Exec, class T>
struct traits<vera::delta_weight_expr<Exec, T>> {
  using ReturnType = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
};
template <class Exec, class WD, class T>
struct traits<vera::merged_weight_expr<Exec, WD, T>> {
  using ReturnType = Eigen::Matrix<vera::detail::result_scalar_t<WD, T>, Eigen::Dynamic, Eigen::Dynamic>;
};
}  // namespace Eigen::internal

namespace vera {

/// \brief ΔW = Λb B Λd A (out x in; in x out with fan_in_fan_out), lazily.
///
/// `dW = expr;` overwrites; `expr.add_to(W)` is a merge and `expr.subtract_from(W)` an unmerge,
/// both one GEMM into W with no temporary of W's size. `.using_workspace(ws)` keeps the small
/// Λb B Λd buffer in `ws` instead of allocating it.
template <class Exec, class T>
class delta_weight_expr : public Eigen::ReturnByValue<delta_weight_expr<Exec, T>>,
                          public uses_workspace<delta_weight_expr<Exec, T>, T> {
 public:
  /// \brief Refers to `ad`, which must outlive the expression; see vera::delta_weight.
  explicit delta_weight_expr(const adapter<T>& ad) : adapter_(&ad) {}

  /// \brief out (in with fan_in_fan_out).
  Eigen::Index rows() const {
    return adapter_->options().fan_in_fan_out ? adapter_->in_features() : adapter_->out_features();
  }
  /// \brief in (out with fan_in_fan_out).
  Eigen::Index cols() const {
    return adapter_->options().fan_in_fan_out ? adapter_->out_features() : adapter_->in_features();
  }

  /// \brief Eigen's hook for `dW = expr`: overwrites dW.
  /// \throws shape_error when dW does not have the shape rows() x cols().
  template <class Dst>
  void evalTo(Dst& dst) const {
    vera::detail::check_shape("destination", rows(), cols(), dst.rows(), dst.cols());
    evaluate(Exec{}, *this, dst, T(0), T(1));
  }
  /// \brief W += ΔW (a merge) in one GEMM, without a temporary of W's size.
  /// \throws shape_error when W does not have the shape rows() x cols().
  template <class Dst>
  void add_to(Eigen::MatrixBase<Dst>& dst) const {
    vera::detail::check_shape("destination", rows(), cols(), dst.rows(), dst.cols());
    evaluate(Exec{}, *this, dst.derived(), T(1), T(1));
  }
  /// \brief W -= ΔW (an unmerge) in one GEMM, without a temporary of W's size.
  /// \throws shape_error when W does not have the shape rows() x cols().
  template <class Dst>
  void subtract_from(Eigen::MatrixBase<Dst>& dst) const {
    vera::detail::check_shape("destination", rows(), cols(), dst.rows(), dst.cols());
    evaluate(Exec{}, *this, dst.derived(), T(1), T(-1));
  }

  /// \brief The adapter.
  const adapter<T>& layer() const noexcept { return *adapter_; }

 private:
  const adapter<T>* adapter_;
};

/// \brief W0 + ΔW, lazily; W0 has the layout the adapter's options say.
template <class Exec, class WD, class T>
class merged_weight_expr : public Eigen::ReturnByValue<merged_weight_expr<Exec, WD, T>> {
  static_assert(vera::detail::storage_matches<WD, T>,
                "vera::merged_weight: W0 must have the adapter's scalar type (or bfloat16 for a float adapter)");

 public:
  /// \brief Checks W0 against the adapter; see vera::merged_weight.
  /// \throws shape_error when W0 is not out x in (in x out with fan_in_fan_out).
  merged_weight_expr(const WD& w0, const adapter<T>& ad) : w0_(w0), delta_(ad) {
    detail::check_base_weight("W0", w0, ad);
  }
  /// \brief Rows of W0.
  Eigen::Index rows() const { return w0_.rows(); }
  /// \brief Columns of W0.
  Eigen::Index cols() const { return w0_.cols(); }

  /// \brief Eigen's hook for `W = expr`: W = W0 + ΔW.
  /// \throws shape_error when W does not have W0's shape; aliasing_error when W overlaps W0.
  template <class Dst>
  void evalTo(Dst& dst) const {
    vera::detail::check_shape("destination", rows(), cols(), dst.rows(), dst.cols());
    vera::detail::check_no_alias("vera::merged_weight", dst, "W0", w0_);
    dst = w0_;
    delta_.add_to(dst);
  }

 private:
  detail::closure_t<WD> w0_;
  delta_weight_expr<Exec, T> delta_;
};

/// \brief Lazy ΔW of `ad` on policy Exec (default: CPU): out x in, or in x out with
///        fan_in_fan_out. A temporary adapter is refused at compile time.
template <class Exec = exec::default_policy, class T>
delta_weight_expr<Exec, T> delta_weight(const adapter<T>& ad) {
  return delta_weight_expr<Exec, T>(ad);
}
template <class Exec = exec::default_policy, class T>
void delta_weight(adapter<T>&&) = delete;

/// \brief Lazy W0 + ΔW, W0's shape. A temporary adapter is refused at compile time.
/// \throws shape_error when W0 is not out x in (in x out with fan_in_fan_out).
template <class Exec = exec::default_policy, class WD, class T>
merged_weight_expr<Exec, WD, T> merged_weight(const Eigen::MatrixBase<WD>& w0, const adapter<T>& ad) {
  return {w0.derived(), ad};
}
// The expression refers to the adapter: binding a temporary one is refused.
template <class Exec = exec::default_policy, class WD, class T>
void merged_weight(const Eigen::MatrixBase<WD>&, adapter<T>&&) = delete;

/// \brief W0 += ΔW in place. Shapes as in vera::forward. `ws` (optional) avoids allocating.
///
/// A bfloat16 W0 (float adapter) is merged as PEFT 0.21 merges a bfloat16 model: ΔW in float32
/// from A and B rounded to bfloat16, added to W0 in float32 and rounded once.
/// \throws shape_error when W0 is not out x in (in x out with fan_in_fan_out).
template <class WD, class T>
void merge(Eigen::MatrixBase<WD>& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  detail::check_base_weight("W0", w0, ad);
  workspace<T> local;
  delta_weight(ad).using_workspace(ws != nullptr ? *ws : local).add_to(w0);
}

/// \brief W0 -= ΔW in place; undoes merge up to rounding (one rounding per element each way).
/// \throws shape_error when W0 is not out x in (in x out with fan_in_fan_out).
template <class WD, class T>
void unmerge(Eigen::MatrixBase<WD>& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  detail::check_base_weight("W0", w0, ad);
  workspace<T> local;
  delta_weight(ad).using_workspace(ws != nullptr ? *ws : local).subtract_from(w0);
}

/// \brief W0 += ΔW only if every merged element is finite; otherwise throws value_error naming
///        the first bad element and leaves W0 untouched. Uses `ws` (or a local buffer) for the
///        candidate weight.
/// \throws shape_error when W0 is not out x in (in x out with fan_in_fan_out); value_error when
///         a merged element is not finite.
template <class WD, class T>
void safe_merge(Eigen::MatrixBase<WD>& w0, const adapter<T>& ad, workspace<T>* ws = nullptr) {
  detail::check_base_weight("W0", w0, ad);
  workspace<T> local;
  workspace<T>& scratch = ws != nullptr ? *ws : local;
  // The candidate takes W0's storage order, so that ΔW is added with the same arithmetic as
  // merge() and a safe merge gives the same bits as a plain one.
  using S = typename WD::Scalar;
  using order_matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic,
                                     WD::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor>;
  S* candidate_data;
  if constexpr (std::is_same_v<S, T>) {
    candidate_data = scratch.get(0, w0.rows(), w0.cols()).data();
  } else {
    candidate_data = scratch.get_bfloat16(3, w0.rows(), w0.cols()).data();
  }
  Eigen::Map<order_matrix> candidate(candidate_data, w0.rows(), w0.cols());
  candidate = w0;
  delta_weight(ad).using_workspace(scratch).add_to(candidate);
  if (!candidate.allFinite()) {  // vectorised; the scan below runs only to name the element
    for (index j = 0; j < candidate.cols(); ++j) {
      for (index i = 0; i < candidate.rows(); ++i) {
        if (!std::isfinite(static_cast<double>(candidate(i, j)))) {
          throw value_error("vera::safe_merge: merged weight is not finite at (" +
                            std::to_string(i) + ", " + std::to_string(j) + "); W0 left unchanged");
        }
      }
    }
  }
  w0 = candidate;
}

}  // namespace vera
