// SPDX-License-Identifier: Apache-2.0
// Sibling layers (attention q/k/v, MLP gate/up): adapted layers that read the same input.
#pragma once

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"
#include "vera/expr/forward.hpp"
#include "vera/expr/operand.hpp"

namespace vera {

namespace detail {

/// \brief One member of a sibling group: its frozen weight, its bias (or vera::no_bias) and its
///        adapter, held the way expressions hold operands (plain matrices by reference).
template <class WD, class Bias, class T>
class sibling_layer {
  static_assert(vera::detail::storage_matches<WD, T>,
                "vera::sibling: W0 must have the adapter's scalar type (or bfloat16 for a float adapter)");

 public:
  using scalar = T;  ///< Element type of the adapter (b, d, A, B).
  using storage = typename WD::Scalar;  ///< Element type of W0: T, or bfloat16 for a float adapter.
  using weight_type = WD;  ///< Expression type of W0 as given to vera::sibling.
  using bias_type = Bias;  ///< Expression type of the bias, or vera::no_bias_t.

  /// \brief Keeps the operands; use vera::sibling. Only the scalar types and that the bias is a
  ///        vector are checked here (at compile time); shapes are checked by sibling_group.
  sibling_layer(const WD& w0, const Bias& bias, const adapter<T>& ad) : w0_(w0), bias_(bias), adapter_(&ad) {
    if constexpr (!std::is_same_v<Bias, no_bias_t>) {
      static_assert(vera::detail::storage_matches<Bias, T>,
                    "vera::sibling: bias must have the adapter's scalar type (or bfloat16 for a float adapter)");
      static_assert(Bias::RowsAtCompileTime == 1 || Bias::ColsAtCompileTime == 1,
                    "vera::sibling: bias must be a vector (out elements)");
    }
  }

  /// \brief W0, out x in (in x out with fan_in_fan_out).
  const detail::closure_t<WD>& w0() const noexcept { return w0_; }
  /// \brief The bias (out elements) or vera::no_bias.
  const detail::bias_closure_t<Bias>& bias() const noexcept { return bias_; }
  /// \brief The adapter.
  const adapter<T>& layer() const noexcept { return *adapter_; }

 private:
  detail::closure_t<WD> w0_;
  detail::bias_closure_t<Bias> bias_;
  const adapter<T>* adapter_;
};

}  // namespace detail

/// \brief Describes one sibling. Shapes: W0 out x in (in x out with fan_in_fan_out), bias out
///        elements or vera::no_bias. Checked when the group is formed.
template <class WD, class Bias, class T>
detail::sibling_layer<WD, Bias, T> sibling(const Eigen::MatrixBase<WD>& w0, const Bias& bias, const adapter<T>& ad) {
  if constexpr (std::is_same_v<Bias, no_bias_t>) {
    return {w0.derived(), bias, ad};
  } else {
    return {w0.derived(), bias.derived(), ad};
  }
}
// A group must not outlive its adapters: binding a temporary adapter is refused.
template <class WD, class Bias, class T>
void sibling(const Eigen::MatrixBase<WD>&, const Bias&, adapter<T>&&) = delete;

namespace detail {

template <class F, std::size_t... I>
void for_each_index(F&& f, std::index_sequence<I...>) {
  (f(std::integral_constant<std::size_t, I>{}), ...);
}

// Calls f(integral_constant<i>) for i = 0 .. N-1, in order.
template <std::size_t N, class F>
void for_each_index(F&& f) {
  for_each_index(std::forward<F>(f), std::make_index_sequence<N>{});
}

inline std::string sibling_operand(std::size_t i, const char* operand) {
  return "sibling " + std::to_string(i) + " " + operand;
}

// check_no_alias for an operand whose name is built (by `name()`) only when it overlaps.
template <class Dst, class Name, class Operand>
void check_no_alias_named(const char* operation, const Dst& dst, Name&& name, const Operand& operand) {
  if (overlaps(dst, operand)) vera::detail::check_no_alias(operation, dst, name().c_str(), operand);
}


/// \brief Adapted layers that read the same input X and share one projection, in_features and
///        rank, so they share P = X A^T in forward and one GEMM against A for grad_X.
///
/// Their out_features, weights (layout included), biases and b, d differ. Dropout: PEFT draws
/// an independent mask per module, which would give each sibling its own P; a group instead
/// applies ONE mask to X for all siblings, so every sibling must have the same dropout
/// probability (0 makes the group exactly equal to the siblings run one by one). Holds its
/// members by value; they refer to the caller's weights and adapters, which must outlive it.
template <class... Layers>
class sibling_group {
  static_assert(sizeof...(Layers) >= 1, "vera::siblings: a group needs at least one sibling");
  using first = std::tuple_element_t<0, std::tuple<Layers...>>;

 public:
  using scalar = typename first::scalar;  ///< Adapter element type, the same for every sibling.
  /// Element type of every W0, and of X and each G_i: scalar, or bfloat16 for a float adapter.
  using storage = typename first::storage;
  static constexpr std::size_t size = sizeof...(Layers);  ///< Number of siblings, at least 1.
  static_assert((std::is_same_v<typename Layers::scalar, scalar> && ...),
                "vera::siblings: every sibling must have the same scalar type");
  static_assert((std::is_same_v<typename Layers::storage, storage> && ...),
                "vera::siblings: every sibling's W0 must have the same scalar type");

  /// \brief Throws value_error for a different projection or dropout, shape_error for another
  ///        in_features or a wrong W0/bias, rank_error for another rank; each names the sibling.
  explicit sibling_group(const Layers&... layers) : layers_(layers...) {
    const adapter<scalar>& lead = std::get<0>(layers_).layer();
    detail::for_each_index<size>([&](auto i) {
      const auto& member = std::get<decltype(i)::value>(layers_);
      const adapter<scalar>& ad = member.layer();
      if (!ad.shared_projection().shares_storage_with(lead.shared_projection())) {
        throw value_error(detail::sibling_operand(i, "adapter") +
                          ": expected the projection of sibling 0 (the same vera::projection "
                          "object or a copy of it), got another projection");
      }
      if (ad.in_features() != lead.in_features()) {
        throw shape_error(detail::sibling_operand(i, "adapter") + ": expected in_features " +
                          std::to_string(lead.in_features()) + " (sibling 0's; siblings read one X), got " +
                          std::to_string(ad.in_features()));
      }
      if (ad.rank() != lead.rank()) {
        throw rank_error(detail::sibling_operand(i, "adapter") + ": expected rank " +
                         std::to_string(lead.rank()) + " (sibling 0's; siblings share P), got " +
                         std::to_string(ad.rank()));
      }
      if (ad.options().dropout != lead.options().dropout) {
        throw value_error(detail::sibling_operand(i, "adapter") + ": expected dropout " +
                          std::to_string(lead.options().dropout) +
                          " (sibling 0's; a group applies one shared mask to X), got " +
                          std::to_string(ad.options().dropout));
      }
      detail::check_base_weight(detail::sibling_operand(i, "W0").c_str(), member.w0(), ad);
      if constexpr (!std::is_same_v<typename std::decay_t<decltype(member)>::bias_type, no_bias_t>) {
        vera::detail::check_size(detail::sibling_operand(i, "bias").c_str(), ad.out_features(), member.bias().size());
      }
    });
  }

  /// \brief Sibling i (0-based, in the order given to vera::siblings).
  template <std::size_t I>
  const auto& member() const noexcept {
    return std::get<I>(layers_);
  }
  /// \brief Sibling 0's adapter; in_features, rank, A and dropout are the same for all.
  const adapter<scalar>& lead() const noexcept { return std::get<0>(layers_).layer(); }
  /// \brief in, the columns of the shared input X.
  index in_features() const noexcept { return lead().in_features(); }
  /// \brief r, the shared rank: the columns of P = X A^T.
  index rank() const noexcept { return lead().rank(); }
  /// \brief The shared dropout probability, applied as one mask on X in a training forward.
  double dropout() const noexcept { return lead().options().dropout; }

 private:
  std::tuple<Layers...> layers_;
};

}  // namespace detail

/// \brief Forms a group from `vera::sibling(W0, bias, adapter)` descriptions, e.g. q, k, v:
///        adapted layers that read the same input X and share one projection, in_features and
///        rank, so they share P = X A^T in forward and one GEMM against A for grad_X.
///
/// Their out_features, weights (layout included), biases and b, d differ. Dropout: PEFT draws
/// an independent mask per module, which would give each sibling its own P; a group instead
/// applies ONE mask to X for all siblings, so every sibling must have the same dropout
/// probability (0 makes the group exactly equal to the siblings run one by one). The group holds
/// its members by value; they refer to the caller's weights and adapters, which must outlive it.
/// \throws value_error for a different projection or dropout, shape_error for another
///         in_features or a wrong W0/bias, rank_error for another rank; each names the sibling.
template <class... Layers>
detail::sibling_group<Layers...> siblings(const Layers&... layers) {
  return detail::sibling_group<Layers...>(layers...);
}

}  // namespace vera
