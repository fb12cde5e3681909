// SPDX-License-Identifier: Apache-2.0
// The Eigen operand family of the expression nodes: Eigen operands with a vera::adapter, their
// checks, and how results reach Eigen destinations (`Y = expr`, add_to, gradients<T>).
#pragma once

#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/assignable.hpp"
#include "vera/expr/nodes.hpp"
#include "vera/expr/operand.hpp"
#include "vera/expr/settings.hpp"

namespace Eigen::internal {
template <class Exec, class XD, class WD, class Bias, class T>
struct traits<vera::detail::forward_expr<Exec, XD, WD, Bias, T, vera::detail::eigen_operands>> {
  using ReturnType = Eigen::Matrix<vera::detail::result_scalar_t<XD, T>, Eigen::Dynamic, Eigen::Dynamic>;
};
template <class Exec, class GD, class WD, class T>
struct traits<vera::detail::input_gradient_expr<Exec, GD, WD, T, vera::detail::eigen_operands>> {
  using ReturnType = Eigen::Matrix<vera::detail::result_scalar_t<GD, T>, Eigen::Dynamic, Eigen::Dynamic>;
};
template <class Exec, class T>
struct traits<vera::detail::delta_weight_expr<Exec, T, vera::detail::eigen_operands>> {
  using ReturnType = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
};
template <class Exec, class WD, class T>
struct traits<vera::detail::merged_weight_expr<Exec, WD, T, vera::detail::eigen_operands>> {
  using ReturnType = Eigen::Matrix<vera::detail::result_scalar_t<WD, T>, Eigen::Dynamic, Eigen::Dynamic>;
};
}  // namespace Eigen::internal

namespace vera {

namespace detail {

template <class Bias>
struct bias_closure {
  using type = closure_t<Bias>;
};
template <>
struct bias_closure<no_bias_t> {
  using type = no_bias_t;
};
template <class Bias>
using bias_closure_t = typename bias_closure<Bias>::type;

template <class Bias>
index bias_size(const Bias& bias) {
  if constexpr (std::is_same_v<Bias, no_bias_t>) {
    return -1;
  } else {
    return bias.size();
  }
}

// W0 is out x in, or in x out when the layer stores it transposed (fan_in_fan_out).
template <class WD, class T>
void check_base_weight(const char* operand, const WD& w0, const adapter<T>& ad) {
  const index out = ad.out_features();
  const index in = ad.in_features();
  if (ad.options().fan_in_fan_out) {
    vera::detail::check_shape(operand, in, out, w0.rows(), w0.cols());
  } else {
    vera::detail::check_shape(operand, out, in, w0.rows(), w0.cols());
  }
}

template <class GD, class T>
void check_upstream(const GD& g, const adapter<T>& ad, const forward_context<T>& ctx) {
  if (!ctx.ready()) {
    throw state_error("vera backward: the forward context holds no training forward; evaluate "
                      "vera::forward(...).train(ctx) first");
  }
  vera::detail::check_cols("G", ad.out_features(), g.cols(), "the layer's out_features");
  vera::detail::check_rows("G", ctx.rows(), g.rows(), "rows of the training forward");
  if (ctx.projected().cols() != ad.rank()) {
    throw rank_error("forward context: holds rank " + std::to_string(ctx.projected().cols()) +
                     ", the adapter has rank " + std::to_string(ad.rank()));
  }
}

// Gradient buffers: empty ones (a default-constructed gradients<T>) are sized on overwrite, so
// the answer is true; buffers of another size throw shape_error naming the operand, which
// `name()` spells only then (no string is built on the normal path).
template <class T, class Name>
bool gradient_buffers_need_sizing(const gradients<T>& out, const adapter<T>& ad, assign_mode mode, Name&& name) {
  if (mode == assign_mode::overwrite && out.lambda_b.size() == 0 && out.lambda_d.size() == 0) return true;
  if (out.lambda_b.size() != ad.out_features()) {
    vera::detail::check_size((name() + ".lambda_b").c_str(), ad.out_features(), out.lambda_b.size());
  }
  if (out.lambda_d.size() != ad.rank()) {
    vera::detail::check_size((name() + ".lambda_d").c_str(), ad.rank(), out.lambda_d.size());
  }
  return false;
}

/// \brief Matrix-valued results into Eigen destinations: vera::detail::assignable.
template <class Derived, class Exec, class T>
using eigen_matrix_result = detail::assignable<Derived, Exec>;

/// \brief Where parameter gradients of an Eigen-operand expression go: a vera::gradients<T>.
template <class Derived, class Exec, class T>
class gradient_result {
 public:
  /// \brief Writes (or adds) the gradients into `out`. On overwrite, empty buffers (a
  ///        default-constructed gradients<T>) are sized; buffers of another size throw
  ///        shape_error rather than being reallocated under whoever holds their address (an
  ///        optimizer, a gradient bucket).
  void eval_to(gradients<T>& out, assign_mode mode = assign_mode::overwrite) const {
    const Derived& self = static_cast<const Derived&>(*this);
    if (gradient_buffers_need_sizing(out, self.layer(), mode, [] { return std::string("gradients"); })) {
      out.lambda_b.resize(self.layer().out_features());
      out.lambda_d.resize(self.layer().rank());
    }
    evaluate(Exec{}, self, out, mode);
  }
  /// \brief Evaluates into a fresh gradients<T>.
  gradients<T> eval() const {
    gradients<T> out;
    eval_to(out);
    return out;
  }
  /// \brief Evaluates into a fresh gradients<T>, for `gradients<T> g = expr;`.
  operator gradients<T>() const { return eval(); }  // NOLINT: evaluation on conversion is the point
};

/// \brief How ΔW reaches an Eigen destination: `dW = expr` writes it, add_to merges, subtract_from
///        unmerges, each one GEMM into the destination.
template <class Derived, class Exec, class T>
class delta_result : public Eigen::ReturnByValue<Derived> {
 public:
  /// \brief Eigen's hook for `dW = expr`: overwrites dW.
  /// \throws shape_error when dW does not have the shape rows() x cols().
  template <class Dst>
  void evalTo(Dst& dst) const {
    run(dst, T(0), T(1));
  }
  /// \brief W += ΔW (a merge) in one GEMM, without a temporary of W's size.
  /// \throws shape_error when W does not have the shape rows() x cols().
  template <class Dst>
  void add_to(Eigen::MatrixBase<Dst>& dst) const {
    run(dst.derived(), T(1), T(1));
  }
  /// \brief W -= ΔW (an unmerge) in one GEMM, without a temporary of W's size.
  /// \throws shape_error when W does not have the shape rows() x cols().
  template <class Dst>
  void subtract_from(Eigen::MatrixBase<Dst>& dst) const {
    run(dst.derived(), T(1), T(-1));
  }

 private:
  template <class Dst>
  void run(Dst& dst, T keep, T sign) const {
    const Derived& self = static_cast<const Derived&>(*this);
    vera::detail::check_shape("destination", self.rows(), self.cols(), dst.rows(), dst.cols());
    evaluate(Exec{}, self, dst, keep, sign);
  }
};

/// \brief How W0 + ΔW reaches an Eigen destination: W0 copied in, then the merge GEMM.
template <class Derived, class Exec, class T>
class merged_result : public Eigen::ReturnByValue<Derived> {
 public:
  /// \brief Eigen's hook for `W = expr`: W = W0 + ΔW.
  /// \throws shape_error when W does not have W0's shape; aliasing_error when W overlaps W0.
  template <class Dst>
  void evalTo(Dst& dst) const {
    const Derived& self = static_cast<const Derived&>(*this);
    vera::detail::check_shape("destination", self.rows(), self.cols(), dst.rows(), dst.cols());
    vera::detail::check_no_alias("vera::merged_weight", dst, "W0", self.w0());
    dst = self.w0();
    const detail::delta_weight_expr<Exec, T> delta(self.layer());
    if (self.scratch() != nullptr) {
      delta.using_workspace(*self.scratch()).add_to(dst);
    } else {
      delta.add_to(dst);
    }
  }
};


/// \brief The Eigen operand family: operands held as Eigen nests its own (plain matrices by
///        reference, expressions by value), the layer by address, Eigen destinations.
struct eigen_operands {
  /// How an operand of type D is held.
  template <class D>
  using held = detail::closure_t<D>;
  /// How a bias (or vera::no_bias) is held.
  template <class B>
  using held_bias = detail::bias_closure_t<B>;
  /// The layer.
  template <class T>
  using layer = adapter<T>;
  /// How the layer is held: by address (a temporary adapter is refused by the factories).
  template <class T>
  using layer_holder = const adapter<T>*;
  /// What a training forward keeps for the backward.
  template <class T>
  using context = forward_context<T>;
  /// The scratch-memory modifier, `.using_workspace(ws)`.
  template <class Derived, class T>
  using scratch = detail::uses_workspace<Derived, T>;
  /// Where results go: Eigen matrices (`Y = expr`, `expr.assign_to(Y)`, `expr.add_to(Y)`),
  /// vera::gradients<T>, and W0 for merges.
  using results = detail::destinations<detail::eigen_matrix_result, detail::gradient_result, detail::delta_result,
                               detail::merged_result>;

  /// \brief The holder of `ad`.
  template <class T>
  static const adapter<T>* hold(const adapter<T>& ad) noexcept {
    return &ad;
  }
  /// \brief The layer a holder refers to.
  template <class T>
  static const adapter<T>& layer_of(const adapter<T>* ad) noexcept {
    return *ad;
  }
  /// \brief Rows of an operand.
  template <class D>
  static index rows(const D& m) {
    return m.rows();
  }
  /// \brief Columns of an operand.
  template <class D>
  static index cols(const D& m) {
    return m.cols();
  }
  /// \brief The adapter's extents.
  template <class T>
  static detail::layer_features features(const adapter<T>& ad) noexcept {
    return {ad.in_features(), ad.out_features(), ad.options().fan_in_fan_out};
  }

  /// \brief An adapter is valid once built: nothing to check.
  template <class T>
  static void check_layer(const adapter<T>&) noexcept {}

  /// \brief X, W0 and bias of a forward against the adapter.
  template <class XD, class WD, class Bias, class T>
  static void check_forward(const XD& x, const WD& w0, const Bias& bias, const adapter<T>& ad) {
    static_assert(detail::storage_matches<XD, T>,
                  "vera::forward: X must have the adapter's scalar type (or bfloat16 for a float adapter)");
    static_assert(std::is_same_v<typename XD::Scalar, typename WD::Scalar>,
                  "vera::forward: X and W0 must have the same scalar type");
    detail::check_cols("X", ad.in_features(), x.cols(), "the layer's in_features");
    detail::check_base_weight("W0", w0, ad);
    if constexpr (!std::is_same_v<Bias, no_bias_t>) {
      static_assert(detail::scalar_matches<Bias, T> || std::is_same_v<typename Bias::Scalar, typename XD::Scalar>,
                    "vera::forward: bias must have the adapter's scalar type or X's (bfloat16)");
      static_assert(Bias::RowsAtCompileTime == 1 || Bias::ColsAtCompileTime == 1,
                    "vera::forward: bias must be a vector (out elements)");
      detail::check_size("bias", ad.out_features(), bias.size());
    }
  }
  /// \brief G against the adapter and the context of its training forward.
  template <class GD, class T>
  static void check_upstream(const GD& g, const adapter<T>& ad, const forward_context<T>& ctx) {
    static_assert(detail::storage_matches<GD, T>,
                  "vera backward: G must have the adapter's scalar type (or bfloat16 for a float adapter)");
    detail::check_upstream(g, ad, ctx);
  }
  /// \brief G and W0 of an input gradient against the adapter and the context.
  template <class GD, class WD, class T>
  static void check_input_gradient(const GD& g, const WD& w0, const adapter<T>& ad, const forward_context<T>& ctx) {
    static_assert(std::is_same_v<typename GD::Scalar, typename WD::Scalar>,
                  "vera::input_gradient: G and W0 must have the same scalar type");
    check_upstream(g, ad, ctx);
    check_base_weight(w0, ad);
  }
  /// \brief W0 against the adapter.
  template <class WD, class T>
  static void check_base_weight(const WD& w0, const adapter<T>& ad) {
    static_assert(detail::storage_matches<WD, T>,
                  "vera: W0 must have the adapter's scalar type (or bfloat16 for a float adapter)");
    detail::check_base_weight("W0", w0, ad);
  }
};

}  // namespace detail

}  // namespace vera
