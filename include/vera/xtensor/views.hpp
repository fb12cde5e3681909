// SPDX-License-Identifier: Apache-2.0
// xtensor views of an adapter's state: projection slices (read-only) and lambda_b, lambda_d.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

#include <xtensor/xadapt.hpp>
#include <xtensor/xview.hpp>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/xtensor/gradients.hpp"

namespace vera::xt {

namespace detail {

// The whole of a row-major rows x cols matrix, read-only.
template <class T>
auto adapt_matrix(const T* data, index rows, index cols) {
  const auto r = static_cast<std::size_t>(rows);
  const auto c = static_cast<std::size_t>(cols);
  return ::xt::adapt(std::move(data), r * c, ::xt::no_ownership(), std::array<std::size_t, 2>{r, c});
}

// Its top-left rows x cols corner: the slice PEFT takes (A[:, :in], B[:out, :]), also by rank.
template <class Full>
auto top_left(Full&& full, index rows, index cols) {
  return ::xt::view(std::forward<Full>(full), ::xt::range(0, rows), ::xt::range(0, cols));
}

// Enables lambda_b and lambda_d for an adapter<T>, const or not.
template <class Adapter>
constexpr bool is_adapter = false;
template <class T>
constexpr bool is_adapter<adapter<T>> = true;
template <class Adapter>
using if_adapter = std::enable_if_t<is_adapter<std::remove_const_t<Adapter>>>;

}  // namespace detail

/// \brief The full A (rank x max_in) of a shared projection, read-only, without a copy.
///
/// Views of the projection's immutable buffer: valid while any copy of the projection (or an
/// adapter holding it) lives.
template <class T>
auto projection_a(const projection<T>& p) {
  return detail::adapt_matrix(p.a().data(), p.rank(), p.max_in());
}
/// \brief The full B (max_out x rank) of a shared projection, read-only, without a copy.
template <class T>
auto projection_b(const projection<T>& p) {
  return detail::adapt_matrix(p.b().data(), p.max_out(), p.rank());
}

/// \brief A layer's A = A_full[:rank, :in] (rank x in), read-only, without a copy.
template <class T>
auto projection_a(const adapter<T>& ad) {
  return detail::top_left(projection_a(ad.shared_projection()), ad.rank(), ad.in_features());
}
/// \brief A layer's B = B_full[:out, :rank] (out x rank), read-only, without a copy.
template <class T>
auto projection_b(const adapter<T>& ad) {
  return detail::top_left(projection_b(ad.shared_projection()), ad.out_features(), ad.rank());
}

// A view into a temporary would dangle once the temporary is gone.
template <class T>
void projection_a(projection<T>&&) = delete;
template <class T>
void projection_b(projection<T>&&) = delete;
template <class T>
void projection_a(adapter<T>&&) = delete;
template <class T>
void projection_b(adapter<T>&&) = delete;

/// \brief lambda_b (out elements) as a 1-D xtensor view of the adapter's storage: writable
///        for an adapter, read-only for a const one.
///
/// `vera::xt::lambda_b(ad) -= lr * grads.lambda_b();` updates the adapter in place. The size is
/// fixed for the adapter's lifetime, so the view stays valid as long as the adapter does.
template <class Adapter, class = detail::if_adapter<Adapter>>
auto lambda_b(Adapter& ad) {
  return detail::adapt_vector(ad.lambda_b().data(), ad.out_features());
}
/// \brief lambda_d (rank elements) as a 1-D xtensor view of the adapter's storage: writable for
///        an adapter, read-only for a const one.
template <class Adapter, class = detail::if_adapter<Adapter>>
auto lambda_d(Adapter& ad) {
  return detail::adapt_vector(ad.lambda_d().data(), ad.rank());
}
template <class T>
void lambda_b(adapter<T>&&) = delete;
template <class T>
void lambda_d(adapter<T>&&) = delete;

}  // namespace vera::xt
