// SPDX-License-Identifier: Apache-2.0
// The front-end's lazy expressions over device views: vera::forward, parameter_gradients,
// input_gradient, delta_weight and merged_weight build them from vera::cuda views, and evaluate()
// overloads for CUDA policies run them through the backend's operations. The policy tag picks
// these evaluators at compile time, as exec::cpu picks the host ones.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "vera/backend/cuda/backward.cuh"
#include "vera/backend/cuda/forward.cuh"
#include "vera/backend/cuda/memory.cuh"
#include "vera/backend/cuda/merge.cuh"
#include "vera/core/exec.hpp"
#include "vera/core/error.hpp"
#include "vera/expr/nodes.hpp"
#include "vera/expr/settings.hpp"

namespace vera::cuda {

/// \brief What a training forward keeps for the backward on the device: P = drop(X) A^T in
///        memory the caller owns, and the dropout key of that forward (backward regenerates the
///        mask from it).
///
/// The device counterpart of vera::forward_context: one per layer, reused every step. `storage`
/// (at least the largest batch's rows, the layer's rank columns) holds P; each training forward
/// uses its first n rows and advances the dropout step. The bookkeeping is on the host: a
/// backward must run on the stream of its forward, or after synchronising with it.
template <class T>
class forward_context {
 public:
  /// \brief Keeps P in `storage`; `dropout` is the probability of dropping an element of the
  ///        adapter's input in a training forward, `dropout_seed` makes the masks reproducible.
  /// \throws shape_error when storage's stride is below its columns; value_error for a null
  ///         pointer under a non-empty view or a dropout probability outside [0, 1).
  explicit forward_context(matrix_ref<T> storage, double dropout = 0.0,
                            std::uint64_t dropout_seed = 0)
      : storage_(storage) {
    detail::check_matrix("forward_context storage", storage, storage.rows, storage.cols);
    key_.seed = dropout_seed;
    key_.probability = dropout;
    (void)detail::uses_dropout(&key_);
  }

  /// \brief True after a training forward has been enqueued with this context.
  bool ready() const noexcept { return ready_; }
  /// \brief Rows (tokens) of that forward.
  index rows() const noexcept { return rows_; }
  /// \brief P of that forward: the first rows() rows of the storage.
  matrix_ref<T> projected() const noexcept { return {storage_.data, rows_, storage_.cols, storage_.stride}; }
  /// \brief The dropout key of that forward (probability 0: no dropout).
  const dropout_key& mask_key() const noexcept { return key_; }
  /// \brief The whole storage given at construction.
  matrix_ref<T> storage() const noexcept { return storage_; }

  /// \brief The dropout step the next training forward uses (one per forward, from 0).
  std::uint64_t next_step() const noexcept { return next_step_; }
  /// \brief Continues the dropout sequence at `step` (e.g. next_step() from a checkpoint).
  void resume_at(std::uint64_t step) noexcept { next_step_ = step; }

  /// \brief Where the next training forward of n rows writes P; changes nothing. Used by
  ///        evaluators.
  /// \throws rank_error when the storage does not have `rank` columns; shape_error when it has
  ///         fewer than n rows.
  matrix_ref<T> next_projected(index n, index rank) const {
    if (storage_.cols != rank) {
      throw rank_error("forward_context: storage has " + std::to_string(storage_.cols) +
                       " columns, the layer has rank " + std::to_string(rank));
    }
    if (n > storage_.rows) {
      throw shape_error("forward_context: storage holds " + std::to_string(storage_.rows) +
                        " rows of P, the forward has " + std::to_string(n));
    }
    return {storage_.data, n, rank, storage_.stride};
  }
  /// \brief The dropout key of the next training forward. Used by evaluators.
  dropout_key next_key() const noexcept { return {key_.seed, next_step_, key_.probability}; }
  /// \brief Records a training forward of n rows enqueued with next_key(). Used by evaluators.
  void commit(index n) noexcept {
    key_.step = next_step_++;
    rows_ = n;
    ready_ = true;
  }

 private:
  matrix_ref<T> storage_;
  dropout_key key_;
  std::uint64_t next_step_ = 0;
  index rows_ = 0;
  bool ready_ = false;
};

/// \brief Where parameter gradients go on the device: `out` floats for lambda_b, `rank` floats
///        for lambda_d; a null pointer skips that gradient.
struct gradients_ref {
  float* lambda_b = nullptr;  ///< dL/d lambda_b, out floats, or null
  float* lambda_d = nullptr;  ///< dL/d lambda_d, rank floats, or null
};

namespace detail {
struct stream_setting;

/// \brief Base of the device expressions: `.on(ctx)` names the stream and cuBLAS handle, and
///        `.using_workspace(ws)` the scratch memory. Both are required: the backend neither
///        picks a stream nor allocates. Both are settings as the host expressions' modifiers are
///        (vera::detail::setting).
template <class Derived>
class device_settings : public vera::detail::setting<Derived, detail::stream_setting, stream_context>,
                        public vera::detail::setting<Derived, vera::detail::workspace_setting, workspace_ref> {
  using stream_base = vera::detail::setting<Derived, detail::stream_setting, stream_context>;
  using workspace_base = vera::detail::setting<Derived, vera::detail::workspace_setting, workspace_ref>;

 public:
  /// \brief Enqueue on ctx.stream through ctx.cublas.
  Derived on(const stream_context& ctx) const { return stream_base::with_setting(ctx); }
  /// \brief Enqueue on the stream `h` is bound to.
  Derived on(const handle& h) const { return on(h.context()); }
  /// \brief Use `ws` as scratch memory (workspace_bytes(layer, n) covers every operation).
  Derived using_workspace(workspace_ref ws) const { return workspace_base::with_setting(ws); }
  /// \brief Use the memory `ws` holds as scratch memory.
  Derived using_workspace(workspace& ws) const { return using_workspace(ws.ref()); }

  /// \brief The stream and handle set by on().
  const stream_context& on_stream() const noexcept { return stream_base::setting_value(); }
  /// \brief The workspace set by using_workspace().
  workspace_ref scratch() const noexcept { return workspace_base::setting_value(); }

  /// \brief Throws value_error naming `operation` unless on() and using_workspace() were given.
  void check_settings(const char* operation) const {
    if (on_stream().cublas == nullptr) {
      throw value_error(std::string(operation) +
                        ": no cuBLAS handle; give the stream and handle with .on(ctx) before evaluating");
    }
    if (scratch().data == nullptr) {
      throw value_error(std::string(operation) +
                        ": no workspace; give one with .using_workspace(ws) before evaluating "
                        "(vera::cuda::workspace_bytes(layer, n) bytes cover every operation)");
    }
  }
};

/// The upstream gradient against the layer and its forward context, as the host front-end
/// checks it.
template <class T>
void check_upstream(const matrix_ref<const T>& g, const layer_ref<T>& layer,
                    const forward_context<T>& ctx) {
  if (!ctx.ready()) {
    throw state_error("vera backward (exec::cuda): the forward context holds no training forward; "
                      "evaluate vera::forward(exec::cuda{}, ...).train(ctx) first");
  }
  vera::detail::check_cols("G", layer.out, g.cols, "the layer's out features");
  vera::detail::check_rows("G", ctx.rows(), g.rows, "rows of the training forward");
  if (ctx.storage().cols != layer.rank) {
    throw rank_error("forward_context: holds rank " + std::to_string(ctx.storage().cols) +
                     ", the layer has rank " + std::to_string(layer.rank));
  }
}

template <class Exec>
inline constexpr bool device_policy = exec::is_cuda_policy<Exec>;

/// \brief The device operand family of the expression nodes (vera/expr/nodes.hpp): row-major
///        device views held by value, a layer_ref held by value (a temporary one is fine),
///        results enqueued into device views with `.eval_to(dst)` / `.add_to(dst)` on the stream
///        given with `.on()`. Both `.on()` and `.using_workspace()` are required.
struct device_operands;

/// A node of the device family evaluates on a CUDA policy only.
template <class Exec>
struct device_family_policy {
  static_assert(device_policy<Exec>, "vera: device views (vera::cuda) are evaluated by exec::cuda or a tag derived from it");
};

/// Matrix-valued device results (forward, input gradient): Y = expr or Y += expr, enqueued.
template <class Derived, class Exec, class T>
class matrix_result : device_family_policy<Exec> {
 public:
  /// \brief Y = expr, enqueued on the stream; Y must be rows() x cols().
  void eval_to(matrix_ref<T> y) const { evaluate(Exec{}, static_cast<const Derived&>(*this), y, assign_mode::overwrite); }
  /// \brief Y += expr, enqueued on the stream; Y must be rows() x cols().
  void add_to(matrix_ref<T> y) const { evaluate(Exec{}, static_cast<const Derived&>(*this), y, assign_mode::accumulate); }
};

/// Parameter gradients into device buffers (a null pointer skips one).
template <class Derived, class Exec, class T>
class gradient_result : device_family_policy<Exec> {
 public:
  /// \brief Writes the gradients (a null pointer in `out` skips one).
  void eval_to(gradients_ref out) const { evaluate(Exec{}, static_cast<const Derived&>(*this), out, assign_mode::overwrite); }
  /// \brief Adds the gradients to what `out` holds.
  void add_to(gradients_ref out) const { evaluate(Exec{}, static_cast<const Derived&>(*this), out, assign_mode::accumulate); }
};

/// ΔW into a device view: written, merged (added) or unmerged (subtracted), one GEMM each.
template <class Derived, class Exec, class T>
class delta_result : device_family_policy<Exec> {
 public:
  /// \brief dW = ΔW, enqueued on the stream.
  void eval_to(matrix_ref<T> dw) const { evaluate(Exec{}, static_cast<const Derived&>(*this), dw, 0.0f, 1.0f); }
  /// \brief W0 += ΔW (a merge), enqueued on the stream.
  void add_to(matrix_ref<T> w0) const { evaluate(Exec{}, static_cast<const Derived&>(*this), w0, 1.0f, 1.0f); }
  /// \brief W0 -= ΔW (an unmerge), enqueued on the stream.
  void subtract_from(matrix_ref<T> w0) const { evaluate(Exec{}, static_cast<const Derived&>(*this), w0, 1.0f, -1.0f); }
};

/// W0 + ΔW into a separate device view.
template <class Derived, class Exec, class T>
class merged_result : device_family_policy<Exec> {
 public:
  /// \brief W = W0 + ΔW, enqueued on the stream; W must not share memory with W0.
  void eval_to(matrix_ref<T> w) const { evaluate(Exec{}, static_cast<const Derived&>(*this), w); }
};

struct device_operands {
  /// Operands are device views, held by value.
  template <class D>
  using held = D;
  /// The bias: a device pointer (out elements) or null.
  template <class B>
  using held_bias = B;
  /// The layer: a device layer view.
  template <class T>
  using layer = layer_ref<T>;
  /// Held by value.
  template <class T>
  using layer_holder = layer_ref<T>;
  /// What a training forward keeps for the backward on the device.
  template <class T>
  using context = forward_context<T>;
  /// `.on(stream)` and `.using_workspace(ws)`.
  template <class Derived, class T>
  using scratch = device_settings<Derived>;
  /// Where results go: device views and gradients_ref, enqueued on the stream.
  using results = vera::detail::destinations<detail::matrix_result, detail::gradient_result, detail::delta_result,
                               detail::merged_result>;

  /// \brief The layer view itself.
  template <class T>
  static layer_ref<T> hold(const layer_ref<T>& layer) noexcept {
    return layer;
  }
  /// \brief The layer view itself.
  template <class T>
  static const layer_ref<T>& layer_of(const layer_ref<T>& layer) noexcept {
    return layer;
  }
  /// \brief Rows of a view.
  template <class T>
  static index rows(const matrix_ref<T>& m) noexcept {
    return m.rows;
  }
  /// \brief Columns of a view.
  template <class T>
  static index cols(const matrix_ref<T>& m) noexcept {
    return m.cols;
  }
  /// \brief The layer's extents.
  template <class T>
  static vera::detail::layer_features features(const layer_ref<T>& layer) noexcept {
    return {layer.in, layer.out, layer.fan_in_fan_out};
  }

  /// \brief The layer against its projection.
  template <class T>
  static void check_layer(const layer_ref<T>& layer) {
    detail::check_layer(layer);
  }
  /// \brief The layer, X and W0 of a forward.
  template <class T>
  static void check_forward(const matrix_ref<const T>& x, const matrix_ref<const T>& w0, const T*,
                            const layer_ref<T>& layer) {
    detail::check_layer(layer);
    detail::check_matrix("X", x, x.rows, layer.in);
    detail::check_weight(layer, "W0", w0);
  }
  /// \brief The layer and G against the context of its training forward.
  template <class T>
  static void check_upstream(const matrix_ref<const T>& g, const layer_ref<T>& layer, const forward_context<T>& ctx) {
    detail::check_layer(layer);
    detail::check_upstream(g, layer, ctx);
  }
  /// \brief The layer, G and W0 of an input gradient.
  template <class T>
  static void check_input_gradient(const matrix_ref<const T>& g, const matrix_ref<const T>& w0,
                                   const layer_ref<T>& layer, const forward_context<T>& ctx) {
    check_upstream(g, layer, ctx);
    detail::check_weight(layer, "W0", w0);
  }
  /// \brief W0 against the layer.
  template <class T>
  static void check_base_weight(const matrix_ref<const T>& w0, const layer_ref<T>& layer) {
    detail::check_weight(layer, "W0", w0);
  }
};

/// \brief Y (n x out) = X W0^T + bias + (drop(X) A^T)(Λb B Λd)^T on the device, lazily: the
///        forward node over device views. `.eval_to(Y)` overwrites, `.add_to(Y)` accumulates;
///        evaluation runs vera::cuda::forward or forward_train on the stream given with `.on()`.
template <class Exec, class T>
using forward_expr = vera::detail::forward_expr<Exec, matrix_ref<const T>, matrix_ref<const T>, const T*, T, device_operands>;
/// \brief dL/d lambda_b and dL/d lambda_d on the device, lazily: `.eval_to(grads)` overwrites,
///        `.add_to(grads)` accumulates.
template <class Exec, class T>
using parameter_gradient_expr = vera::detail::parameter_gradient_expr<Exec, matrix_ref<const T>, T, device_operands>;
/// \brief dL/dX (n x in) = G W0 + drop((G Λb B Λd) A) on the device, lazily.
template <class Exec, class T>
using input_gradient_expr = vera::detail::input_gradient_expr<Exec, matrix_ref<const T>, matrix_ref<const T>, T, device_operands>;
/// \brief ΔW = Λb B Λd A on the device, lazily: `.eval_to(dW)` writes ΔW, `.add_to(W0)` is a merge
///        and `.subtract_from(W0)` an unmerge.
template <class Exec, class T>
using delta_weight_expr = vera::detail::delta_weight_expr<Exec, T, device_operands>;
/// \brief W0 + ΔW on the device into a separate matrix of W0's shape, lazily.
template <class Exec, class T>
using merged_weight_expr = vera::detail::merged_weight_expr<Exec, matrix_ref<const T>, T, device_operands>;

// Evaluators of the CUDA policies. An expression's eval_to / add_to call evaluate(Exec{}, ...)
// unqualified, so a tag derived from exec::cuda can bring overloads of its own.

/// \brief Runs a device forward expression: vera::cuda::forward, or forward_train with the
///        context's storage and next dropout key (the context records the step only once the
///        call has been enqueued, so a refused call leaves it as it was).
template <class Exec, class T, std::enable_if_t<detail::device_policy<Exec>, int> = 0>
void evaluate(Exec, const detail::forward_expr<Exec, T>& e, matrix_ref<T> y, assign_mode mode) {
  forward_context<T>* ctx = e.context();
  e.check_settings(ctx != nullptr ? "vera::cuda::forward_train" : "vera::cuda::forward");
  const bool accumulate = mode == assign_mode::accumulate;
  if (ctx == nullptr) {
    detail::forward_impl<T>(e.on_stream(), e.layer(), e.x(), e.w0(), e.bias(), y, nullptr, nullptr,
                            e.scratch(), e.requested_order(), accumulate);
    return;
  }
  matrix_ref<T> projected = ctx->next_projected(e.rows(), e.layer().rank);
  const dropout_key key = ctx->next_key();
  detail::forward_impl<T>(e.on_stream(), e.layer(), e.x(), e.w0(), e.bias(), y, &projected, &key,
                          e.scratch(), e.requested_order(), accumulate);
  ctx->commit(e.rows());
}

/// \brief Runs vera::cuda::parameter_gradients on the context's P.
template <class Exec, class T, std::enable_if_t<detail::device_policy<Exec>, int> = 0>
void evaluate(Exec, const detail::parameter_gradient_expr<Exec, T>& e, gradients_ref out, assign_mode mode) {
  e.check_settings("vera::cuda::parameter_gradients");
  vera::cuda::parameter_gradients<T>(e.on_stream(), e.layer(), e.upstream(), e.context().projected(), out.lambda_b,
                         out.lambda_d, e.scratch(), mode == assign_mode::accumulate);
}

/// \brief Runs vera::cuda::input_gradient with the forward's dropout key.
template <class Exec, class T, std::enable_if_t<detail::device_policy<Exec>, int> = 0>
void evaluate(Exec, const detail::input_gradient_expr<Exec, T>& e, matrix_ref<T> dx, assign_mode mode) {
  e.check_settings("vera::cuda::input_gradient");
  vera::cuda::input_gradient<T>(e.on_stream(), e.layer(), e.upstream(), e.w0(), dx, e.scratch(),
                    &e.context().mask_key(), mode == assign_mode::accumulate, e.requested_order());
}

/// \brief dst = keep dst + sign ΔW: ΔW alone (0, 1), merge (1, 1), unmerge (1, -1).
template <class Exec, class T, std::enable_if_t<detail::device_policy<Exec>, int> = 0>
void evaluate(Exec, const detail::delta_weight_expr<Exec, T>& e, matrix_ref<T> dst, float keep, float sign) {
  const char* operation = keep == 0.0f ? "vera::delta_weight (exec::cuda)"
                                       : (sign > 0.0f ? "vera::cuda::merge" : "vera::cuda::unmerge");
  e.check_settings(operation);
  detail::merge_signed(e.on_stream(), e.layer(), dst, e.scratch(), keep, sign, operation,
                       keep == 0.0f ? "destination (ΔW)" : "W0");
}

/// \brief Runs the merged copy W = W0 + ΔW.
template <class Exec, class T, std::enable_if_t<detail::device_policy<Exec>, int> = 0>
void evaluate(Exec, const detail::merged_weight_expr<Exec, T>& e, matrix_ref<T> w) {
  const char* operation = "vera::merged_weight (exec::cuda)";
  e.check_settings(operation);
  const matrix_ref<const T> w0 = e.w0();
  detail::merge_signed(e.on_stream(), e.layer(), w, e.scratch(), 1.0f, 1.0f, operation, "destination (W0 + ΔW)", &w0);
}

}  // namespace detail

}  // namespace vera::cuda

namespace vera {

/// \brief Lazy forward of an adapted layer on device views, on policy `Exec` (exec::cuda or a
///        tag derived from it).
///
/// Shapes: X n x in, W0 out x in (in x out with fan_in_fan_out), bias out elements or null;
/// the result is n x out. The layer view is copied: a temporary layer_ref is fine.
/// \throws shape_error, rank_error or value_error naming the operand, when the expression is built.
template <class Exec, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
cuda::detail::forward_expr<Exec, T> forward(Exec, cuda::input_ref<T> x, cuda::input_ref<T> w0,
                                    cuda::detail::nondeduced<const T*> bias, const cuda::layer_ref<T>& layer) {
  return {x, w0, bias, layer};
}
/// \brief Lazy forward on device views: exec::cuda, the only policy that evaluates them.
template <class T>
cuda::detail::forward_expr<exec::cuda, T> forward(cuda::input_ref<T> x, cuda::input_ref<T> w0,
                                          cuda::detail::nondeduced<const T*> bias, const cuda::layer_ref<T>& layer) {
  return {x, w0, bias, layer};
}

/// \brief Lazy gradients of lambda_b and lambda_d on device views, on policy `Exec`. G: n x out,
///        ctx: the forward context of the forward of the same n rows.
/// \throws state_error if ctx holds no training forward; shape_error for G of another shape;
///         rank_error when ctx holds another rank.
template <class Exec, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
cuda::detail::parameter_gradient_expr<Exec, T> parameter_gradients(Exec, cuda::input_ref<T> g,
                                                           const cuda::layer_ref<T>& layer,
                                                           const cuda::forward_context<T>& ctx) {
  return {g, layer, ctx};
}
/// \brief As above, on exec::cuda.
template <class T>
cuda::detail::parameter_gradient_expr<exec::cuda, T> parameter_gradients(cuda::input_ref<T> g,
                                                                 const cuda::layer_ref<T>& layer,
                                                                 const cuda::forward_context<T>& ctx) {
  return {g, layer, ctx};
}

// The expressions keep the address of the forward context: a temporary one is refused.
template <class Exec, class T>
void parameter_gradients(Exec, cuda::input_ref<T>, const cuda::layer_ref<T>&, cuda::forward_context<T>&&) = delete;
template <class T>
void parameter_gradients(cuda::input_ref<T>, const cuda::layer_ref<T>&, cuda::forward_context<T>&&) = delete;

/// \brief Lazy gradient of the layer input on device views, on policy `Exec`. G: n x out, W0
///        as in vera::forward; the result is n x in.
/// \throws state_error if ctx holds no training forward; shape_error for G or W0 of another
///         shape; rank_error when ctx holds another rank.
template <class Exec, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
cuda::detail::input_gradient_expr<Exec, T> input_gradient(Exec, cuda::input_ref<T> g, cuda::input_ref<T> w0,
                                                  const cuda::layer_ref<T>& layer,
                                                  const cuda::forward_context<T>& ctx) {
  return {g, w0, layer, ctx};
}
/// \brief As above, on exec::cuda.
template <class T>
cuda::detail::input_gradient_expr<exec::cuda, T> input_gradient(cuda::input_ref<T> g, cuda::input_ref<T> w0,
                                                        const cuda::layer_ref<T>& layer,
                                                        const cuda::forward_context<T>& ctx) {
  return {g, w0, layer, ctx};
}

template <class Exec, class T>
void input_gradient(Exec, cuda::input_ref<T>, cuda::input_ref<T>, const cuda::layer_ref<T>&,
                    cuda::forward_context<T>&&) = delete;
template <class T>
void input_gradient(cuda::input_ref<T>, cuda::input_ref<T>, const cuda::layer_ref<T>&,
                    cuda::forward_context<T>&&) = delete;

/// \brief Lazy W0 + ΔW of a device layer on policy Exec (default: exec::cuda), W0's shape.
/// \throws shape_error, rank_error or value_error when W0 or the layer does not fit.
template <class Exec = exec::cuda, class T>
cuda::detail::merged_weight_expr<Exec, T> merged_weight(cuda::input_ref<T> w0, const cuda::layer_ref<T>& layer) {
  return cuda::detail::merged_weight_expr<Exec, T>(w0, layer);
}

/// \brief Lazy ΔW of a device layer on policy Exec (default: exec::cuda).
/// \throws shape_error, rank_error or value_error when the layer does not fit its projection.
template <class Exec = exec::cuda, class T>
cuda::detail::delta_weight_expr<Exec, T> delta_weight(const cuda::layer_ref<T>& layer) {
  return cuda::detail::delta_weight_expr<Exec, T>(layer);
}

}  // namespace vera
