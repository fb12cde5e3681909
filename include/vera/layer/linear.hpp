// SPDX-License-Identifier: Apache-2.0
// A ready-to-use adapted linear layer: owns W0, bias, adapter, context and workspace.
#pragma once

#include <optional>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/backend/cpu/backward.hpp"
#include "vera/backend/cpu/bfloat16.hpp"
#include "vera/backend/cpu/forward.hpp"
#include "vera/backend/cpu/merge.hpp"

namespace vera {

/// \brief Frozen linear layer W0 (out x in, or in x out with fan_in_fan_out) plus a VeRA adapter.
///
/// Keeps the per-layer state a training loop needs (context, workspace, merged flag) so that a
/// steady-state step allocates nothing. While merged, forward runs the base path only and
/// training calls throw state_error.
///
/// `Storage` is the element type of W0, the bias, X, G and the outputs: T, or `Eigen::bfloat16`
/// for a float adapter (`vera::linear<float, Eigen::bfloat16>`: bfloat16 storage, float32
/// accumulation, b and d and their gradients in float32, as PEFT runs a bfloat16 model). Outputs
/// go to destinations of either float or bfloat16.
template <class T, class Storage = T>
class linear {
  static_assert(std::is_same_v<Storage, T> || (std::is_same_v<T, float> && std::is_same_v<Storage, Eigen::bfloat16>),
                "vera::linear: W0 is stored in the adapter's scalar type, or in bfloat16 for a float adapter");

 public:
  /// Column-major storage for W0.
  using matrix = Eigen::Matrix<Storage, Eigen::Dynamic, Eigen::Dynamic>;

  /// \brief Takes W0 and (optionally) a bias of out elements; checks them against the adapter.
  /// \param w0 out x in (in x out when the adapter's options set fan_in_fan_out).
  /// \param bias out elements, or std::nullopt.
  /// \param ad the adapter; its in/out features fix the layer's shape.
  /// \param dropout_seed seeds the context's dropout masks.
  /// \throws shape_error when W0 or bias does not fit the adapter.
  linear(matrix w0, std::optional<vector<Storage>> bias, adapter<T> ad, std::uint64_t dropout_seed = 0)
      : w0_(std::move(w0)), bias_(std::move(bias)), adapter_(std::move(ad)), context_(dropout_seed) {
    detail::check_base_weight("W0", w0_, adapter_);
    if (bias_) vera::detail::check_size("bias", adapter_.out_features(), bias_->size());
  }

  /// \brief W0 as stored (out x in, or in x out with fan_in_fan_out); holds W0 + ΔW while merged.
  const matrix& weight() const noexcept { return w0_; }
  /// \brief The bias (out elements), or empty for a layer without one.
  const std::optional<vector<Storage>>& bias() const noexcept { return bias_; }
  /// \brief Writable adapter; refused while merged, since W0 then holds the current ΔW and
  ///        changing b or d would make unmerge() subtract something else.
  /// \throws state_error while merged.
  adapter<T>& vera_adapter() {
    require_unmerged("vera_adapter");
    return adapter_;
  }
  /// \brief Read-only adapter; allowed while merged.
  const adapter<T>& vera_adapter() const noexcept { return adapter_; }
  /// \brief The layer's forward context (P of the last training forward, dropout step).
  const forward_context<T>& context() const noexcept { return context_; }
  /// \brief Continues the dropout sequence at `step` (see forward_context::resume_at).
  void resume_dropout_at(std::uint64_t step) noexcept { context_.resume_at(step); }
  /// \brief True between merge() and unmerge().
  bool merged() const noexcept { return merged_; }

  /// \brief Association order of the unmerged forward passes (default: the cost model's choice).
  ///        Forcing order::low_rank keeps the evaluation independent of merge()'s arithmetic.
  void set_order(order requested) noexcept { order_ = requested; }
  /// \brief The association order set by set_order (order::automatic by default).
  order forward_order() const noexcept { return order_; }

  /// \brief Inference forward: Y (n x out) from X (n x in). Base path only while merged.
  ///
  /// A resizable Y is resized; a block or map must already be n x out.
  /// \throws shape_error for X with other than in columns or Y of the wrong shape.
  /// \throws aliasing_error when Y overlaps X (unmerged path).
  template <class XD, class YD>
  void forward(const Eigen::MatrixBase<XD>& x, Eigen::MatrixBase<YD>& y) {
    static_assert(std::is_same_v<typename XD::Scalar, Storage>, "vera::linear: X must have W0's scalar type");
    vera::detail::check_cols("X", adapter_.in_features(), x.cols(), "the layer's in_features");
    if (merged_) {
      base_forward(x, y);
      return;
    }
    with_bias([&](const auto& b) {
      assign(vera::forward(x, w0_, b, adapter_).using_workspace(ws_).with_order(order_), y);
    });
  }

  /// \brief Training forward: like forward, with dropout, saving what backward needs.
  /// \throws state_error while merged; shape_error and aliasing_error as forward.
  template <class XD, class YD>
  void forward_train(const Eigen::MatrixBase<XD>& x, Eigen::MatrixBase<YD>& y) {
    require_unmerged("forward_train");
    static_assert(std::is_same_v<typename XD::Scalar, Storage>, "vera::linear: X must have W0's scalar type");
    with_bias([&](const auto& b) {
      assign(vera::forward(x, w0_, b, adapter_).train(context_).using_workspace(ws_).with_order(order_), y);
    });
  }

  /// \brief Gradients of lambda_b/lambda_d into `grads` (overwrite or accumulate).
  ///
  /// G = dL/dY is n x out, with n the rows of the last forward_train.
  /// \throws state_error while merged or before any forward_train.
  /// \throws shape_error for G of the wrong shape or `grads` sized for another adapter.
  template <class GD>
  void backward(const Eigen::MatrixBase<GD>& g, gradients<T>& grads,
                assign_mode mode = assign_mode::overwrite) {
    require_unmerged("backward");
    parameter_gradients(g, adapter_, context_).using_workspace(ws_).eval_to(grads, mode);
  }

  /// \brief Gradients of lambda_b/lambda_d, and dL/dX (n x in) into `dx`.
  /// \throws as the other overload; also shape_error for a dx that cannot hold n x in and
  ///         aliasing_error when dx overlaps G.
  template <class GD, class DXD>
  void backward(const Eigen::MatrixBase<GD>& g, gradients<T>& grads, Eigen::MatrixBase<DXD>& dx,
                assign_mode mode = assign_mode::overwrite) {
    backward(g, grads, mode);
    const auto expr = input_gradient(g, w0_, adapter_, context_).using_workspace(ws_);
    if (mode == assign_mode::overwrite) {
      assign(expr, dx);
    } else {
      expr.add_to(dx);
    }
  }

  /// \brief Merges the adapter into W0 with safe-merge semantics.
  /// \throws state_error if already merged; value_error (W0 unchanged) when a merged element
  ///         would not be finite.
  void merge() {
    require_unmerged("merge");
    safe_merge(w0_, adapter_, &ws_);
    merged_ = true;
  }
  /// \brief Undoes merge() (W0 -= ΔW; equal to the W0 before merge() up to rounding).
  /// \throws state_error if not merged.
  void unmerge() {
    if (!merged_) throw state_error("vera::linear::unmerge: the adapter is not merged");
    vera::unmerge(w0_, adapter_, &ws_);
    merged_ = false;
  }

 private:
  // Y = expr: a plain matrix of another shape is resized first; a destination of another scalar
  // than the result's (float for a bfloat16 layer) receives the float32 accumulator.
  template <class Expr, class YD>
  static void assign(const Expr& expr, Eigen::MatrixBase<YD>& y) {
    using result = typename Eigen::internal::traits<Expr>::ReturnType::Scalar;
    if constexpr (std::is_same_v<typename YD::Scalar, result>) {
      y.derived() = expr;
    } else {
      if constexpr (std::is_base_of_v<Eigen::PlainObjectBase<YD>, YD>) y.derived().resize(expr.rows(), expr.cols());
      expr.assign_to(y);
    }
  }

  // The merged layer: Y = X W^T + bias (W holds W0 + ΔW). bfloat16 layers accumulate in float32
  // and round once, as their unmerged forward does.
  template <class XD, class YD>
  void base_forward(const Eigen::MatrixBase<XD>& x, Eigen::MatrixBase<YD>& y) {
    if constexpr (std::is_same_v<Storage, Eigen::bfloat16>) {
      if constexpr (std::is_base_of_v<Eigen::PlainObjectBase<YD>, YD>) {
        y.derived().resize(x.rows(), adapter_.out_features());
      } else {
        vera::detail::check_shape("Y", x.rows(), adapter_.out_features(), y.rows(), y.cols());
      }
      auto acc = detail::cpu::bfloat16_path::accumulator(y.derived(), assign_mode::overwrite, ws_);
      if (bias_) acc.rowwise() += bias_->template cast<float>().transpose();
      if (adapter_.options().fan_in_fan_out) {
        gemm(acc, x.derived(), w0_, true);
      } else {
        gemm(acc, x.derived(), w0_.transpose(), true);
      }
      y.derived() = acc.template cast<typename YD::Scalar>();
    } else {
      if (adapter_.options().fan_in_fan_out) {
        y.derived().noalias() = x * w0_;
      } else {
        y.derived().noalias() = x * w0_.transpose();
      }
      if (bias_) y.derived().rowwise() += bias_->transpose();
    }
  }

  template <class F>
  void with_bias(F&& f) {
    if (bias_) {
      f(*bias_);
    } else {
      f(no_bias);
    }
  }
  void require_unmerged(const char* what) const {
    if (merged_) {
      throw state_error(std::string("vera::linear::") + what +
                        ": the adapter is merged into W0; unmerge() first");
    }
  }

  matrix w0_;
  std::optional<vector<Storage>> bias_;
  adapter<T> adapter_;
  forward_context<T> context_;
  workspace<T> ws_;
  bool merged_ = false;
  order order_ = order::automatic;
};

}  // namespace vera
