// SPDX-License-Identifier: Apache-2.0
// Backward of an adapted layer on xtensor operands: gradients of b, d and X via the shared expressions.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

#include <xtensor/xadapt.hpp>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/context.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/backend/cpu/backward.hpp"
#include "vera/core/exec.hpp"
#include "vera/expr/backward.hpp"
#include "vera/xtensor/modifiers.hpp"
#include "vera/xtensor/result.hpp"
#include "vera/xtensor/storage.hpp"

namespace vera::xt {

namespace detail {

template <class Scalar>
auto adapt_vector(Scalar* data, index size) {
  return ::xt::adapt(std::move(data), static_cast<std::size_t>(size), ::xt::no_ownership(),
                     std::array<std::size_t, 1>{static_cast<std::size_t>(size)});
}

// The Eigen front-end's backward expressions over the operands' extents, in G's storage: they
// validate the operands and carry the modifiers' settings.
template <class Exec, class G, class T>
using checked_parameter_gradients =
    vera::parameter_gradient_expr<Exec, extents_map<storage_t<G, T>>, T>;
template <class Exec, class G, class T>
using checked_input_gradient =
    vera::input_gradient_expr<Exec, extents_map<storage_t<G, T>>, extents_map<storage_t<G, T>>, T>;

}  // namespace detail

/// \brief dL/d lambda_b (out) and dL/d lambda_d (rank), read and written as 1-D xtensor views.
///
/// Holds a vera::gradients<T>, so the shared evaluator writes into it directly and a reused
/// object allocates nothing. The views returned by lambda_b() and lambda_d() point into this
/// object: take them again after an overwriting evaluation into empty gradients (which sizes
/// them).
template <class T>
class gradients {
 public:
  gradients() = default;
  /// \brief Zero gradients sized for `ad`.
  explicit gradients(const adapter<T>& ad) : values_(ad) {}

  /// \brief dL/d lambda_b, out elements, writable.
  auto lambda_b() { return detail::adapt_vector(values_.lambda_b.data(), values_.lambda_b.size()); }
  /// \brief dL/d lambda_b, out elements, read-only.
  auto lambda_b() const {
    return detail::adapt_vector<const T>(values_.lambda_b.data(), values_.lambda_b.size());
  }
  /// \brief dL/d lambda_d, rank elements, writable.
  auto lambda_d() { return detail::adapt_vector(values_.lambda_d.data(), values_.lambda_d.size()); }
  /// \brief dL/d lambda_d, rank elements, read-only.
  auto lambda_d() const {
    return detail::adapt_vector<const T>(values_.lambda_d.data(), values_.lambda_d.size());
  }

  /// \brief The same values as the Eigen front-end's type (shared storage, no copy).
  vera::gradients<T>& eigen() noexcept { return values_; }
  /// \brief The same values as the Eigen front-end's type, read-only.
  const vera::gradients<T>& eigen() const noexcept { return values_; }

  /// \brief `grads = vera::xt::parameter_gradients(...)`: evaluates in place, reusing the buffers.
  template <class Expr, class = decltype(std::declval<const Expr&>().eval_to(
                            std::declval<gradients&>(), assign_mode::overwrite))>
  gradients& operator=(const Expr& e) {
    e.eval_to(*this, assign_mode::overwrite);
    return *this;
  }

  /// \brief `grads += vera::xt::parameter_gradients(...)`: accumulates without a temporary.
  template <class Expr, class = decltype(std::declval<const Expr&>().eval_to(
                            std::declval<gradients&>(), assign_mode::accumulate))>
  gradients& operator+=(const Expr& e) {
    e.eval_to(*this, assign_mode::accumulate);
    return *this;
  }

  /// \brief Zeroes both vectors in place, keeping their sizes.
  void set_zero() { values_.set_zero(); }

 private:
  vera::gradients<T> values_;
};

/// \brief dL/d lambda_b and dL/d lambda_d from an xtensor G = dL/dY, lazily.
///
/// `grads = expr;` overwrites, `grads += expr;` accumulates, exactly as the Eigen front-end's
/// parameter_gradient_expr, which does the work. G holds the adapter's T, or bfloat16 for a
/// float adapter; the gradients stay in T.
template <class Exec, class G, class T>
class parameter_gradient_expr
    : public detail::modifiers_of<parameter_gradient_expr<Exec, G, T>,
                                  detail::checked_parameter_gradients<Exec, G, T>> {
  static_assert(detail::holds_storage_for<G, T>,
                "vera::xt::parameter_gradients: G must hold the adapter's scalar type (or bfloat16 "
                "for a float adapter)");

  using S = detail::storage_t<G, T>;
  using checked_type = detail::checked_parameter_gradients<Exec, G, T>;
  using modifiers = detail::modifiers_of<parameter_gradient_expr, checked_type>;

 public:
  /// \brief Holds G and checks it against the adapter and the context; see
  ///        vera::xt::parameter_gradients.
  /// \throws as vera::xt::parameter_gradients.
  template <class GA>
  parameter_gradient_expr(GA&& g, const adapter<T>& ad, const forward_context<T>& ctx)
      : modifiers(validated(g, ad, ctx)), g_(std::forward<GA>(g)) {}

  /// \brief Writes (or adds) the gradients into `out`. On overwrite, empty buffers are sized;
  ///        buffers of another size throw shape_error, as vera::parameter_gradient_expr::eval_to.
  /// \throws shape_error as described; state_error, rank_error as vera::parameter_gradients.
  void eval_to(gradients<T>& out, assign_mode mode = assign_mode::overwrite) const {
    const detail::input_matrix<S> g(g_);
    const auto& checked = this->checked();
    const auto e = vera::parameter_gradients(Exec{}, g.map(), checked.layer(), checked.context());
    this->with_settings(e).eval_to(out.eigen(), mode);
  }

  /// \brief Evaluates into a fresh gradients<T>.
  gradients<T> eval() const {
    gradients<T> out;
    eval_to(out);
    return out;
  }
  /// \brief Evaluates into a fresh gradients<T>, for `vera::xt::gradients<T> g = expr;`.
  operator gradients<T>() const { return eval(); }  // NOLINT: evaluation on conversion is the point

 private:
  friend modifiers;

  parameter_gradient_expr(const parameter_gradient_expr& operands, const checked_type& checked)
      : modifiers(checked), g_(operands.g_) {}

  template <class GC>
  static checked_type validated(const GC& g, const adapter<T>& ad, const forward_context<T>& ctx) {
    detail::check_dimension<2>("G", g);
    return {detail::shape_only<S>(g), ad, ctx};
  }

  detail::closure_t<G> g_;
};

/// \brief dL/dX (n x in) = G (W0 + ΔW), with the dropout mask on the adapter term, lazily.
///
/// Evaluated like vera::xt::forward_expr: `eval()`, conversion, `assign_to(dx)` overwrite (an
/// xt::xtensor or xt::xarray is resized; other destinations must be n x in, dense row-major);
/// `add_to(dx)` accumulates (dx must already be n x in, dense row-major). `rows()` is n and
/// `cols()` in. G and W0 hold the adapter's T, or both bfloat16 for a float adapter (then dX is
/// bfloat16, or the float32 result in a float destination). Evaluation throws aliasing_error
/// when dX overlaps G or W0, and value_error for the merged order on bfloat16 operands.
template <class Exec, class G, class W, class T>
class input_gradient_expr
    : public detail::checked_matrix_result<input_gradient_expr<Exec, G, W, T>,
                                           detail::checked_input_gradient<Exec, G, T>, T> {
  static_assert(detail::holds_storage_for<G, T>,
                "vera::xt::input_gradient: G must hold the adapter's scalar type (or bfloat16 for "
                "a float adapter)");
  // G's storage: T, or bfloat16 for a float adapter; W0 must hold the same.
  using S = detail::storage_t<G, T>;
  // Asked only once G is accepted (S is then its scalar): one mistake, one message.
  static_assert(!detail::holds_storage_for<G, T> || detail::holds_scalar<W, S>,
                "vera::xt::input_gradient: W0 must hold G's scalar type");

  using checked_type = detail::checked_input_gradient<Exec, G, T>;
  using result = detail::checked_matrix_result<input_gradient_expr, checked_type, T>;
  using modifiers = detail::modifiers_of<input_gradient_expr, checked_type>;

 public:
  /// \brief Holds G and W0 and checks them against the adapter and the context; see
  ///        vera::xt::input_gradient.
  /// \throws as vera::xt::input_gradient.
  template <class GA, class WA>
  input_gradient_expr(GA&& g, WA&& w0, const adapter<T>& ad, const forward_context<T>& ctx)
      : result(validated(g, w0, ad, ctx)), g_(std::forward<GA>(g)), w0_(std::forward<WA>(w0)) {}

 private:
  friend typename result::evaluation;
  friend modifiers;

  input_gradient_expr(const input_gradient_expr& operands, const checked_type& checked)
      : result(checked), g_(operands.g_), w0_(operands.w0_) {}

  template <class GC, class WC>
  static checked_type validated(const GC& g, const WC& w0, const adapter<T>& ad,
                                const forward_context<T>& ctx) {
    detail::check_dimension<2>("G", g);
    detail::check_dimension<2>("W0", w0);
    return {detail::shape_only<S>(g), detail::shape_only<S>(w0), ad, ctx};
  }

  template <class Dst>
  void run(Dst& dst, assign_mode mode) const {
    const detail::input_matrix<S> g(g_);
    const detail::input_matrix<S> w0(w0_);
    const auto& checked = this->checked();
    const auto e = vera::input_gradient(Exec{}, g.map(), w0.map(), checked.layer(), checked.context());
    detail::assign(this->with_settings(e), dst, mode);
  }

  detail::closure_t<G> g_;
  detail::closure_t<W> w0_;
};

/// \brief Lazy gradients of lambda_b and lambda_d. Shapes: G n x out (2-D), ctx from the
///        training forward of the same n rows. A temporary adapter is refused at compile time.
/// \throws state_error if ctx holds no training forward; shape_error for a G that is not 2-D
///         n x out; rank_error when ctx was filled at another rank.
template <class Exec, class G, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
parameter_gradient_expr<Exec, G, T> parameter_gradients(Exec, G&& g, const adapter<T>& ad,
                                                        const forward_context<T>& ctx) {
  return {std::forward<G>(g), ad, ctx};
}
/// \brief Lazy gradients on the default (CPU) policy; as the overload above.
template <class G, class T>
parameter_gradient_expr<exec::default_policy, G, T> parameter_gradients(
    G&& g, const adapter<T>& ad, const forward_context<T>& ctx) {
  return {std::forward<G>(g), ad, ctx};
}
template <class G, class T>
void parameter_gradients(G&&, adapter<T>&&, const forward_context<T>&) = delete;

/// \brief Lazy gradient of the layer input (n x in). Shapes: G n x out, W0 as in
///        vera::xt::forward. A temporary adapter is refused at compile time.
/// \throws as vera::xt::parameter_gradients; shape_error also for W0.
template <class Exec, class G, class W, class T, class = std::enable_if_t<std::is_empty_v<Exec>>>
input_gradient_expr<Exec, G, W, T> input_gradient(Exec, G&& g, W&& w0, const adapter<T>& ad,
                                                  const forward_context<T>& ctx) {
  return {std::forward<G>(g), std::forward<W>(w0), ad, ctx};
}
/// \brief Lazy gradient of the layer input on the default (CPU) policy; as the overload above.
template <class G, class W, class T>
input_gradient_expr<exec::default_policy, G, W, T> input_gradient(G&& g, W&& w0,
                                                                  const adapter<T>& ad,
                                                                  const forward_context<T>& ctx) {
  return {std::forward<G>(g), std::forward<W>(w0), ad, ctx};
}
template <class G, class W, class T>
void input_gradient(G&&, W&&, adapter<T>&&, const forward_context<T>&) = delete;

}  // namespace vera::xt
