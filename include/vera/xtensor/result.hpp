// SPDX-License-Identifier: Apache-2.0
// How a matrix-valued xtensor front-end expression reaches its destination: new, overwritten or added to.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "vera/xtensor/storage.hpp"

namespace vera::xt::detail {

/// Base of the matrix-valued expressions, whose result has scalar R. Derived provides rows(),
/// cols() and run(row-major map, assign_mode), which hands the work to the Eigen front-end's
/// expression. A destination holds R or `Also`, the other scalar the Eigen expression writes:
/// float for a bfloat16 layer's result (its float32 accumulator, unrounded), bfloat16 for ΔW of
/// a float adapter; run() is instantiated once per destination scalar actually used.
template <class Derived, class R, class Also = R>
class matrix_result {
 public:
  /// \brief Evaluates into a new row-major xt::xtensor<R, 2> of rows() x cols().
  matrix<R> eval() const {
    auto out = matrix<R>::from_shape(shape());
    auto dst = writable<R>("destination", out, self().rows(), self().cols());
    self().run(dst, assign_mode::overwrite);
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
    using D = value_type_t<destination>;
    if constexpr (is_resizable_container<destination>::value) {
      const bool same_shape = y.dimension() == 2 && extent(y, 0) == self().rows() &&
                              extent(y, 1) == self().cols();
      if (!same_shape) {
        auto fresh = destination::from_shape(shape());
        auto dst = writable<D>("destination", fresh, self().rows(), self().cols());
        self().run(dst, assign_mode::overwrite);
        y = std::move(fresh);
        return;
      }
    }
    auto dst = writable<D>("destination", y, self().rows(), self().cols());
    self().run(dst, assign_mode::overwrite);
  }

 protected:
  /// y += expr; y must be rows() x cols() and dense row-major (never resized).
  template <class Y>
  void accumulate_into(Y& y) const {
    check_scalar<Y>();
    auto dst = writable<value_type_t<Y>>("destination", y, self().rows(), self().cols());
    self().run(dst, assign_mode::accumulate);
  }

 private:
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

  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
  std::array<std::size_t, 2> shape() const {
    return {static_cast<std::size_t>(self().rows()), static_cast<std::size_t>(self().cols())};
  }
};

}  // namespace vera::xt::detail
