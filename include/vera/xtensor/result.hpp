// SPDX-License-Identifier: Apache-2.0
// How the xtensor family's expressions reach their destinations: new, overwritten or added-to
// tensors, and vera::xt::gradients.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "vera/core/exec.hpp"
#include "vera/expr/nodes.hpp"
#include "vera/xtensor/gradients.hpp"
#include "vera/xtensor/storage.hpp"

namespace vera::xt {

namespace detail {

/// \brief The xtensor operand family of the expression nodes (vera/xtensor/operands.hpp).
struct xtensor_operands;

/// The scalar of the result computed from an operand E of an adapter<T>: bfloat16 for bfloat16
/// operands, T otherwise (vera::detail::result_scalar_t, the Eigen family's rule).
template <class E, class T>
struct computed_from {
  using type = vera::detail::result_scalar_t<scalar_tag<storage_t<E, T>>, T>;
};

/// The scalar of a matrix-valued node's result, read off its type (the node is still incomplete
/// where its destination base asks): from X, G and W0 respectively.
template <class Node>
struct result_scalar;
template <class Exec, class X, class W, class Bias, class T>
struct result_scalar<vera::detail::forward_expr<Exec, X, W, Bias, T, xtensor_operands>> : computed_from<X, T> {};
template <class Exec, class G, class W, class T>
struct result_scalar<vera::detail::input_gradient_expr<Exec, G, W, T, xtensor_operands>> : computed_from<G, T> {};
template <class Exec, class W, class T>
struct result_scalar<vera::detail::merged_weight_expr<Exec, W, T, xtensor_operands>> : computed_from<W, T> {};
template <class Node>
using result_scalar_t = typename result_scalar<Node>::type;

/// Base of the matrix-valued expressions `Derived` (evaluated on `Exec`), whose result has
/// scalar R: `eval()`, conversion and `assign_to(y)`. A destination holds R or `Also`, the other
/// scalar the evaluator writes: float for a bfloat16 layer's result (its float32 accumulator,
/// unrounded), bfloat16 for ΔW of a float adapter. Every way ends in the one unqualified call
/// `evaluate(Exec{}, expr, row-major map of the destination, mode)`, instantiated once per
/// destination scalar actually used.
template <class Derived, class Exec, class R, class Also = R>
class writes_matrix {
 public:
  /// \brief Evaluates into a new row-major xt::xtensor<R, 2> of rows() x cols().
  matrix<R> eval() const {
    auto out = matrix<R>::from_shape(shape());
    auto dst = writable<R>("destination", out, self().rows(), self().cols());
    run(dst, assign_mode::overwrite);
    return out;
  }

  /// \brief `xt::xtensor<R, 2> y = expr;` evaluates, as `Eigen::MatrixXf y = expr;` does.
  operator matrix<R>() const { return eval(); }  // NOLINT: evaluation on conversion is the point

  /// \brief Overwrites `y`. An xt::xtensor or xt::xarray of another shape gets fresh memory of
  ///        the right shape (xtensor's own assignment rule) and the old memory is released only
  ///        after evaluation, so it may even be an operand. Any other destination (adaptor, view)
  ///        must already be rows() x cols() and dense row-major, or shape_error is thrown
  ///        before anything is written.
  template <class Y>
  void assign_to(Y&& y) const {
    using destination = std::remove_reference_t<Y>;
    check_scalar<destination>();
    if constexpr (fits<destination>) overwrite(y);  // else refused above: one mistake, one message
  }

 protected:
  /// y += expr; y must be rows() x cols() and dense row-major (never resized).
  template <class Y>
  void accumulate_into(Y& y) const {
    check_scalar<Y>();
    if constexpr (fits<Y>) {
      auto dst = writable<value_type_t<Y>>("destination", y, self().rows(), self().cols());
      run(dst, assign_mode::accumulate);
    }
  }

 private:
  template <class Y>
  void overwrite(Y& y) const {
    using destination = std::remove_reference_t<Y>;
    using D = value_type_t<destination>;
    if constexpr (is_resizable_container<destination>::value) {
      const bool same_shape = y.dimension() == 2 && extent(y, 0) == self().rows() &&
                              extent(y, 1) == self().cols();
      if (!same_shape) {
        auto fresh = destination::from_shape(shape());
        auto dst = writable<D>("destination", fresh, self().rows(), self().cols());
        run(dst, assign_mode::overwrite);
        y = std::move(fresh);
        return;
      }
    }
    auto dst = writable<D>("destination", y, self().rows(), self().cols());
    run(dst, assign_mode::overwrite);
  }

  // True when a destination of type Y may receive the result.
  template <class Y>
  static constexpr bool fits =
      std::is_same_v<value_type_t<Y>, R> || std::is_same_v<value_type_t<Y>, Also>;

  template <class Y>
  static void check_scalar() {
    static_assert(fits<Y>, "vera::xt: the destination must hold the result's scalar type (the "
                           "adapter's; bfloat16 for bfloat16 operands, whose float32 result a "
                           "float destination also takes; bfloat16 too for ΔW of a float adapter)");
  }

  template <class Dst>
  void run(Dst& dst, assign_mode mode) const {
    evaluate(Exec{}, self(), dst, mode);
  }

  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
  std::array<std::size_t, 2> shape() const {
    return {static_cast<std::size_t>(self().rows()), static_cast<std::size_t>(self().cols())};
  }
};

/// Forward and input gradient: writes_matrix, and `add_to(y)`.
template <class Derived, class Exec, class T>
class matrix_result : public writes_matrix<Derived, Exec, result_scalar_t<Derived>, T> {
 public:
  /// \brief y += expr; y must already be rows() x cols() and dense row-major.
  /// \throws shape_error otherwise.
  template <class Y>
  void add_to(Y&& y) const {
    this->accumulate_into(y);
  }
};

/// ΔW: writes_matrix (the adapter's T, or bfloat16 for a float adapter), `add_to(w)` (a merge)
/// and `subtract_from(w)` (an unmerge), each one GEMM into w.
template <class Derived, class Exec, class T>
class delta_result : public writes_matrix<Derived, Exec, T, narrow_storage_t<T>> {
 public:
  /// \brief w += ΔW; w must have ΔW's shape and be dense row-major.
  /// \throws shape_error otherwise.
  template <class Y>
  void add_to(Y&& w) const {
    this->accumulate_into(w);
  }
  /// \brief w -= ΔW; w must have ΔW's shape and be dense row-major, and hold T (or bfloat16
  ///        for a float adapter).
  /// \throws shape_error otherwise.
  template <class Y>
  void subtract_from(Y&& w) const {
    static_assert(holds_storage_for<Y, T>,
                  "vera::xt::delta_weight: w must hold the adapter's scalar type (or bfloat16 for a "
                  "float adapter)");
    const Derived& self = static_cast<const Derived&>(*this);
    auto dst = writable<storage_t<Y, T>>("destination", w, self.rows(), self.cols());
    evaluate(Exec{}, self, dst, assign_mode::accumulate, T(-1));
  }
};

/// W0 + ΔW: writes_matrix in W0's scalar, never accumulated.
template <class Derived, class Exec, class T>
using merged_result = writes_matrix<Derived, Exec, result_scalar_t<Derived>>;

/// Parameter gradients into vera::xt::gradients: `grads = expr`, `grads += expr` (both through
/// eval_to), a fresh object by eval() or conversion.
template <class Derived, class Exec, class T>
class gradient_result {
 public:
  /// \brief Writes (or adds) the gradients into `out`. On overwrite, empty buffers are sized;
  ///        buffers of another size throw shape_error, as vera::detail::parameter_gradient_expr::eval_to.
  /// \throws shape_error as described; state_error, rank_error as vera::parameter_gradients.
  void eval_to(gradients<T>& out, assign_mode mode = assign_mode::overwrite) const {
    evaluate(Exec{}, static_cast<const Derived&>(*this), out, mode);
  }
  /// \brief Evaluates into a fresh gradients<T>.
  gradients<T> eval() const {
    gradients<T> out;
    eval_to(out);
    return out;
  }
  /// \brief Evaluates into a fresh gradients<T>, for `vera::xt::gradients<T> g = expr;`.
  operator gradients<T>() const { return eval(); }  // NOLINT: evaluation on conversion is the point
};

}  // namespace detail

}  // namespace vera::xt
