// SPDX-License-Identifier: Apache-2.0
// vera::delta_weight and vera::merged_weight over Eigen operands (ΔW = Λb B Λd A, W0 + ΔW); in-place
// merge, unmerge, safe merge.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/eigen_operands.hpp"
#include "vera/expr/nodes.hpp"

namespace vera {

/// \brief Lazy ΔW of `ad` on policy Exec (default: CPU): out x in, or in x out with
///        fan_in_fan_out. A temporary adapter is refused at compile time.
template <class Exec = exec::default_policy, class T>
detail::delta_weight_expr<Exec, T> delta_weight(const adapter<T>& ad) {
  return detail::delta_weight_expr<Exec, T>(ad);
}
template <class Exec = exec::default_policy, class T>
void delta_weight(adapter<T>&&) = delete;

/// \brief Lazy W0 + ΔW, W0's shape. A temporary adapter is refused at compile time.
/// \throws shape_error when W0 is not out x in (in x out with fan_in_fan_out).
template <class Exec = exec::default_policy, class WD, class T>
detail::merged_weight_expr<Exec, WD, T> merged_weight(const Eigen::MatrixBase<WD>& w0, const adapter<T>& ad) {
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
