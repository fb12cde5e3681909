// SPDX-License-Identifier: Apache-2.0
// Lazy adapter term alone, ((X A^T) Λd) (Λb B)^T: what an adapter adds to its layer's output.
#pragma once

#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/core/shape.hpp"
#include "vera/expr/assignable.hpp"
#include "vera/expr/operand.hpp"
#include "vera/expr/settings.hpp"

namespace vera {

namespace detail {

template <class Exec, class XD, class T>
class adapter_term_expr;

}  // namespace detail

}  // namespace vera

namespace Eigen::internal {
template <class Exec, class XD, class T>
struct traits<vera::detail::adapter_term_expr<Exec, XD, T>> {
  using ReturnType = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
};
}  // namespace Eigen::internal

namespace vera {

namespace detail {

/// \brief Z (n x out) = ((X A^T) Λd) (Λb B)^T, the adapter's term without W0 and bias, lazily.
///
/// The forward's adapter branch at inference (no dropout): `vera::forward(X, W0, bias, ad)`
/// equals `X W0^T + bias` plus this, up to rounding. `Z = expr;` overwrites, `expr.add_to(Y)`
/// adds the term to an output computed elsewhere (several adapters on one base output, a base
/// layer run by another library); Z must not share memory with X. `.using_workspace(ws)` keeps
/// the n x rank and out x rank buffers in `ws`.
template <class Exec, class XD, class T>
class adapter_term_expr : public detail::assignable<detail::adapter_term_expr<Exec, XD, T>, Exec>,
                          public detail::uses_workspace<detail::adapter_term_expr<Exec, XD, T>, T> {
  static_assert(vera::detail::scalar_matches<XD, T>,
                "vera::adapter_term: X must have the adapter's scalar type");

 public:
  /// \brief Checks X against the adapter and keeps it; see vera::adapter_term.
  /// \throws shape_error naming X when it does not have in_features columns.
  adapter_term_expr(const XD& x, const adapter<T>& ad) : x_(x), adapter_(&ad) {
    vera::detail::check_cols("X", ad.in_features(), x.cols(), "the layer's in_features");
  }

  /// \brief n, the rows of X.
  Eigen::Index rows() const { return x_.rows(); }
  /// \brief out, the layer's output features.
  Eigen::Index cols() const { return adapter_->out_features(); }

  /// \brief X, n x in.
  const detail::closure_t<XD>& x() const noexcept { return x_; }
  /// \brief The adapter.
  const adapter<T>& layer() const noexcept { return *adapter_; }

 private:
  detail::closure_t<XD> x_;
  const adapter<T>* adapter_;
};

}  // namespace detail

/// \brief Lazy adapter term of `ad` on X (n x in) on policy `Exec`; the result is n x out.
///        A temporary adapter is refused at compile time.
/// \throws shape_error naming X when it does not have in_features columns.
template <class Exec, class XD, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
detail::adapter_term_expr<Exec, XD, T> adapter_term(Exec, const Eigen::MatrixBase<XD>& x,
                                            const adapter<T>& ad) {
  return {x.derived(), ad};
}

/// \brief Lazy adapter term on the default (CPU) policy.
template <class XD, class T>
detail::adapter_term_expr<exec::default_policy, XD, T> adapter_term(const Eigen::MatrixBase<XD>& x,
                                                            const adapter<T>& ad) {
  return {x.derived(), ad};
}

// An expression must not outlive its adapter: binding a temporary adapter is refused.
template <class XD, class T>
void adapter_term(const Eigen::MatrixBase<XD>&, adapter<T>&&) = delete;

}  // namespace vera
