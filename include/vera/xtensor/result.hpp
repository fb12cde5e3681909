// SPDX-License-Identifier: Apache-2.0
// How a matrix-valued xtensor front-end expression reaches its destination: new, overwritten or added to.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "vera/xtensor/storage.hpp"

namespace vera::xt::detail {

/// Base of the matrix-valued expressions. Derived provides rows(), cols() and
/// run(row-major map, assign_mode), which hands the work to the Eigen front-end's expression.
template <class Derived, class T>
class matrix_result {
 public:
  /// \brief Evaluates into a new row-major xt::xtensor<T, 2> of rows() x cols().
  matrix<T> eval() const {
    auto out = matrix<T>::from_shape(shape());
    auto dst = writable<T>("destination", out, self().rows(), self().cols());
    self().run(dst, assign_mode::overwrite);
    return out;
  }

  /// \brief `xt::xtensor<T, 2> y = expr;` evaluates, as `Eigen::MatrixXf y = expr;` does.
  operator matrix<T>() const { return eval(); }  // NOLINT: evaluation on conversion is the point

  /// \brief Overwrites `y`. An xt::xtensor or xt::xarray of another shape gets fresh memory of
  ///        the right shape (xtensor's own assignment rule) and the old memory is released only
  ///        after evaluation, so it may even be an operand. Any other destination (adaptor, view)
  ///        must already be rows() x cols() and dense row-major, or shape_error is thrown
  ///        before anything is written.
  template <class Y>
  void assign_to(Y&& y) const {
    using destination = std::remove_reference_t<Y>;
    if constexpr (is_resizable_container<destination>::value) {
      const bool same_shape = y.dimension() == 2 && extent(y, 0) == self().rows() &&
                              extent(y, 1) == self().cols();
      if (!same_shape) {
        auto fresh = destination::from_shape(shape());
        auto dst = writable<T>("destination", fresh, self().rows(), self().cols());
        self().run(dst, assign_mode::overwrite);
        y = std::move(fresh);
        return;
      }
    }
    auto dst = writable<T>("destination", y, self().rows(), self().cols());
    self().run(dst, assign_mode::overwrite);
  }

 protected:
  /// y += expr; y must be rows() x cols() and dense row-major (never resized).
  template <class Y>
  void accumulate_into(Y& y) const {
    auto dst = writable<T>("destination", y, self().rows(), self().cols());
    self().run(dst, assign_mode::accumulate);
  }

 private:
  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
  std::array<std::size_t, 2> shape() const {
    return {static_cast<std::size_t>(self().rows()), static_cast<std::size_t>(self().cols())};
  }
};

}  // namespace vera::xt::detail
