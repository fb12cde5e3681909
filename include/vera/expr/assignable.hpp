// SPDX-License-Identifier: Apache-2.0
// How a matrix-valued lazy expression reaches its destination: `Y = expr`, `expr.assign_to(Y)`,
// `expr.add_to(Y)`, written once for every such expression.
#pragma once

#include <Eigen/Core>

#include "vera/core/exec.hpp"
#include "vera/core/shape.hpp"

namespace vera {

namespace detail {

/// \brief Base of the matrix-valued lazy expressions (`Derived`, evaluated on policy `Exec`).
///
/// Each way of assigning checks that the destination is rows() x cols() (shape_error otherwise),
/// runs `Derived::check_destination(dst)` (the expression's own checks: aliasing with its
/// operands, contexts that changed since it was built), then makes the one unqualified call
/// `evaluate(Exec{}, expr, dst, mode)` that the backend's evaluator answers.
template <class Derived, class Exec>
class assignable : public Eigen::ReturnByValue<Derived> {
 public:
  /// \brief Eigen's hook for `Y = expr`: overwrites Y.
  template <class Dst>
  void evalTo(Dst& dst) const {
    // A resizable destination already has this shape; a block or map may not.
    run(dst, assign_mode::overwrite);
  }
  /// \brief Y = expr into any destination of the right shape, whatever its scalar: with bfloat16
  ///        operands, a float Y receives the float32 accumulator unrounded.
  template <class Dst>
  void assign_to(Eigen::MatrixBase<Dst>& dst) const {
    run(dst.derived(), assign_mode::overwrite);
  }
  /// \brief Y += expr without a temporary; Y must already have the result's shape.
  template <class Dst>
  void add_to(Eigen::MatrixBase<Dst>& dst) const {
    run(dst.derived(), assign_mode::accumulate);
  }
  /// \brief The expression's own checks of a destination; none here.
  template <class Dst>
  void check_destination(const Dst&) const {}

 private:
  template <class Dst>
  void run(Dst& dst, assign_mode mode) const {
    const Derived& self = static_cast<const Derived&>(*this);
    vera::detail::check_shape("destination", self.rows(), self.cols(), dst.rows(), dst.cols());
    self.check_destination(dst);
    evaluate(Exec{}, self, dst, mode);
  }
};

}  // namespace detail

}  // namespace vera
