// SPDX-License-Identifier: Apache-2.0
// The CUDA backend's plan: the association order each device operation runs in, decided in one
// place from the layer's extents, the rows, dropout and the storage type.
#pragma once

#include <string>
#include <type_traits>

#include "vera/backend/cuda/types.cuh"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"
#include "vera/expr/cost.hpp"

namespace vera::cuda::detail {

/// order::automatic for float32 storage; 16-bit storage keeps the low-rank order unless told
/// otherwise: W0 + ΔW rounded to 16 bits would lose most of a small ΔW (bfloat16 keeps 8
/// significant bits, so an update under 1/256 of a weight would vanish), while the low-rank
/// order adds the adapter's term in float32 accumulation.
template <class T>
order storage_default(order requested) {
  if constexpr (!std::is_same_v<T, float>) {
    if (requested == order::automatic) return order::low_rank;
  }
  return requested;
}

/// The extents the order functions read: a layer's positive in, out and rank, and n >= 0 rows.
template <class T>
vera::detail::product_extents order_extents(const char* operation, const layer_ref<T>& layer, index n) {
  vera::detail::check_positive("layer in", layer.in);
  vera::detail::check_positive("layer out", layer.out);
  vera::detail::check_positive("layer rank", layer.rank);
  if (n < 0) {
    throw value_error(std::string(operation) + ": rows must be >= 0, got " + std::to_string(n));
  }
  return {n, layer.in, layer.out, layer.rank};
}

/// \brief The order forward() (keeps_context false) or forward_train() runs for n rows: the
///        CPU's cost model (vera::forward_costs) with a reused workspace, `requested` when not
///        automatic, and always low-rank with dropout (a merged weight cannot apply the mask to
///        the adapter's input alone). With 16-bit storage automatic means low-rank: a merged
///        weight rounded to 16 bits would lose most of a small ΔW.
/// \throws value_error when n is negative or the layer's in, out or rank is not positive.
template <class T>
order forward_order(const layer_ref<T>& layer, index n, bool keeps_context, bool dropout,
                    order requested = order::automatic) {
  const vera::detail::product_extents extents = detail::order_extents("vera::cuda::detail::forward_order", layer, n);
  return vera::detail::choose_order(detail::storage_default<T>(requested),
                      vera::detail::forward_costs(extents, keeps_context, /*workspace_reused=*/true), !dropout);
}

/// \brief The order input_gradient() runs for n rows: low-rank (G Λb B Λd) A, or merged
///        G (W0 + ΔW); chosen as forward_order() does (16-bit storage included), from
///        vera::input_gradient_costs.
/// \throws value_error when n is negative or the layer's in, out or rank is not positive.
template <class T>
order input_gradient_order(const layer_ref<T>& layer, index n, bool dropout,
                           order requested = order::automatic) {
  const vera::detail::product_extents extents = detail::order_extents("vera::cuda::detail::input_gradient_order", layer, n);
  return vera::detail::choose_order(detail::storage_default<T>(requested),
                      vera::detail::input_gradient_costs(extents, /*workspace_reused=*/true), !dropout);
}

}  // namespace vera::cuda::detail
