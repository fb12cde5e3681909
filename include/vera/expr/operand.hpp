// SPDX-License-Identifier: Apache-2.0
// How expressions hold their Eigen operands, and the one aliasing rule, checked at evaluation.
#pragma once

#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "vera/core/exec.hpp"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"
#include "vera/core/vocabulary.hpp"

namespace vera {

namespace detail {

// Plain matrices are held by reference, expression objects (blocks, maps, products) by value:
// the same rule Eigen applies to its own nested operands, so `auto e = vera::forward(...)` holds
// nothing that dies at the end of the full-expression as long as the matrices it names live.
template <class D>
using closure_t = typename Eigen::internal::ref_selector<D>::type;

template <class D>
inline constexpr bool has_direct_access =
    (Eigen::internal::traits<D>::Flags & Eigen::DirectAccessBit) != 0;

// Byte range [first, last) covered by an operand with direct access.
template <class D>
std::pair<const char*, const char*> memory_range(const Eigen::DenseBase<D>& m) {
  const D& d = m.derived();
  if (d.size() == 0) return {nullptr, nullptr};
  const auto* first = reinterpret_cast<const char*>(d.data());
  const index last_offset = (d.outerSize() - 1) * d.outerStride() + (d.innerSize() - 1) * d.innerStride();
  return {first, first + (last_offset + 1) * static_cast<index>(sizeof(typename D::Scalar))};
}

template <class Dst, class Operand>
bool overlaps(const Dst& dst, const Operand& operand) {
  if constexpr (has_direct_access<Dst> && has_direct_access<Operand>) {
    const auto a = memory_range(dst);
    const auto b = memory_range(operand);
    return a.first != nullptr && b.first != nullptr && a.first < b.second && b.first < a.second;
  } else {
    return false;
  }
}

/// \brief The aliasing rule: a vera expression is evaluated directly into its destination, as
///        Eigen's noalias() would, so the destination must not share memory with any operand.
///        Violations are detected for operands with direct access and reported, never computed.
/// \throws aliasing_error naming `operation` and `operand_name` when the byte ranges overlap.
template <class Dst, class Operand>
void check_no_alias(const char* operation, const Dst& dst, const char* operand_name,
                    const Operand& operand) {
  if (detail::overlaps(dst, operand)) {
    throw aliasing_error(std::string(operation) + ": the destination overlaps operand " +
                         operand_name + "; evaluate into a separate matrix");
  }
}

/// \brief The aliasing rule for a forward: Y against X, W0 and the bias (unless vera::no_bias).
template <class Dst, class E>
void check_forward_aliases(const char* operation, const Dst& y, const E& e) {
  check_no_alias(operation, y, "X", e.x());
  check_no_alias(operation, y, "W0", e.w0());
  if constexpr (!std::is_same_v<std::decay_t<decltype(e.bias())>, no_bias_t>) {
    check_no_alias(operation, y, "bias", e.bias());
  }
}

/// \brief Static check that an operand holds the adapter's scalar type.
template <class Operand, class T>
inline constexpr bool scalar_matches = std::is_same_v<typename Operand::Scalar, T>;

/// \brief True when an operand may be stored in `Operand::Scalar` for an adapter of scalar type
///        T: T itself, or bfloat16 for a float adapter (bfloat16 storage, float32 accumulation,
///        b and d in float32 as PEFT keeps them for bfloat16 models).
template <class Operand, class T>
inline constexpr bool storage_matches =
    scalar_matches<Operand, T> ||
    (std::is_same_v<T, float> && std::is_same_v<typename Operand::Scalar, Eigen::bfloat16>);

/// \brief The scalar a result computed from an operand is stored in: bfloat16 operands give
///        bfloat16 results (as PyTorch's), others the adapter's T.
template <class Operand, class T>
using result_scalar_t =
    std::conditional_t<std::is_same_v<typename Operand::Scalar, Eigen::bfloat16>, Eigen::bfloat16, T>;

/// \brief True when a destination may receive a result computed from `Operand`: the adapter's T
///        (for bfloat16 operands, the float32 accumulator unrounded) or the result's scalar.
template <class Dst, class Operand, class T>
inline constexpr bool result_fits =
    scalar_matches<Dst, T> || std::is_same_v<typename Dst::Scalar, result_scalar_t<Operand, T>>;

}  // namespace detail

}  // namespace vera
