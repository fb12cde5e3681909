// SPDX-License-Identifier: Apache-2.0
// How xtensor operands reach the shared evaluators: row-major Eigen maps, or one row-major copy.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xutils.hpp>

#include "vera/adapter/projection.hpp"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"
#include "vera/expr/operand.hpp"

namespace vera::xt {

/// \brief The front-end's matrix: xtensor's default (row-major) 2-D container.
template <class T>
using matrix = ::xt::xtensor<T, 2>;

/// \brief The front-end's vector: a 1-D xtensor container.
template <class T>
using vector = ::xt::xtensor<T, 1>;

namespace detail {

/// True for an xtensor expression (container, adaptor, view, lazy expression): the operands the
/// operations accept from this front-end.
template <class E>
inline constexpr bool is_operand = ::xt::is_xexpression<std::decay_t<E>>::value;

/// Enables an operation's overload for xtensor operands only.
template <class E>
using if_operand = std::enable_if_t<is_operand<E>, int>;

template <class E>
using value_type_t = typename std::decay_t<E>::value_type;

/// True for an xtensor expression whose elements have type T.
template <class E, class T>
inline constexpr bool holds_scalar =
    ::xt::is_xexpression<std::decay_t<E>>::value && std::is_same_v<value_type_t<E>, T>;

/// Stands for an operand of scalar S where the Eigen front-end's rules ask for an operand type.
template <class S>
struct scalar_tag {
  using Scalar = S;
};

/// The element type of an xtensor expression; void for anything else (vera::no_bias included).
template <class E, class = void>
struct element_of {
  using type = void;
};
template <class E>
struct element_of<E, std::enable_if_t<::xt::is_xexpression<std::decay_t<E>>::value>> {
  using type = value_type_t<E>;
};

/// True for an xtensor expression the Eigen front-end would accept for an adapter<T>: elements
/// of type T, or bfloat16 for a float adapter (vera::detail::storage_matches, the one rule).
template <class E, class T>
inline constexpr bool holds_storage_for =
    vera::detail::storage_matches<scalar_tag<typename element_of<E>::type>, T>;

/// The scalar an operand E is mapped as: its own where holds_storage_for allows it, otherwise T,
/// so that a refused operand is reported once, by the xtensor family's static_assert, and
/// not again from inside the Eigen family's check over its extents.
template <class E, class T>
using storage_t = std::conditional_t<holds_storage_for<E, T>, typename element_of<E>::type, T>;

/// The other scalar an adapter<T> stores operands in: bfloat16 for float, none (T) otherwise.
template <class T>
using narrow_storage_t = std::conditional_t<std::is_same_v<T, float>, Eigen::bfloat16, T>;

/// True for expressions whose elements live in memory at data() + data_offset() with strides().
template <class E, class = void>
struct has_strided_memory : std::false_type {};
template <class E>
struct has_strided_memory<E, std::void_t<decltype(std::declval<E&>().data()),
                                         decltype(std::declval<E&>().strides()),
                                         decltype(std::declval<E&>().data_offset())>>
    : std::true_type {};

/// Containers that own their memory and may be given a new shape: xt::xtensor and xt::xarray.
template <class E>
struct is_resizable_container : std::false_type {};
template <class EC, std::size_t N, ::xt::layout_type L, class Tag>
struct is_resizable_container<::xt::xtensor_container<EC, N, L, Tag>> : std::true_type {};
template <class EC, ::xt::layout_type L, class SC, class Tag>
struct is_resizable_container<::xt::xarray_container<EC, L, SC, Tag>> : std::true_type {};

template <class E>
index extent(const E& e, std::size_t axis) {
  return static_cast<index>(e.shape()[axis]);
}

/// A dimension count fixed by the type (xt::xtensor) is checked when compiling; a dynamic one
/// (xt::xarray, most views) here, before anything is read or written.
template <std::size_t N, class E>
void check_dimension(const char* operand, const E& e) {
  constexpr std::size_t fixed = ::xt::get_rank<std::decay_t<E>>::value;
  static_assert(fixed == SIZE_MAX || fixed == N,
                "vera::xt: an operand has the wrong number of dimensions (matrices are 2-D, "
                "bias and lambda vectors 1-D)");
  if (e.dimension() != N) {
    throw shape_error(std::string(operand) + ": expected a " + std::to_string(N) +
                      "-D tensor, got " + std::to_string(e.dimension()) + " dimensions");
  }
}

/// Row-major Eigen view of N-D storage: a matrix for N = 2, a column vector for N = 1.
template <class Scalar, std::size_t N>
using map_t = Eigen::Map<std::conditional_t<
    N == 2, Eigen::Matrix<std::remove_const_t<Scalar>, Eigen::Dynamic, Eigen::Dynamic,
                          Eigen::RowMajor>,
    vera::vector<std::remove_const_t<Scalar>>>>;
template <class T, std::size_t N>
using const_map_t = Eigen::Map<const typename map_t<T, N>::PlainObject>;

template <std::size_t N, class Map, class P, class E>
Map map_over(P data, const E& e) {
  if constexpr (N == 2) {
    return Map(data, extent(e, 0), extent(e, 1));
  } else {
    return Map(data, extent(e, 0));
  }
}

/// True when `e` lies in memory as a dense row-major block: the last axis has stride 1 and each
/// other axis the product of the extents after it. xtensor gives extent-1 axes stride 0 (they
/// are never stepped along), so those axes match whatever their stride; an empty operand
/// addresses nothing and matches too.
template <std::size_t N, class E>
bool is_row_major_dense(const E& e) {
  if constexpr (has_strided_memory<E>::value) {
    if (e.size() == 0) return true;
    const auto& strides = e.strides();
    index expected = 1;
    for (std::size_t axis = N; axis-- > 0;) {
      const index n = extent(e, axis);
      if (n > 1 && static_cast<index>(strides[axis]) != expected) return false;
      expected *= n;
    }
    return true;
  } else {
    return false;
  }
}

/// A read-only operand as the evaluators take it: a map over the caller's memory when that is
/// dense row-major, otherwise over a row-major copy made here once. Copying covers lazy
/// expressions (each element is computed exactly once, however many products read it), strided
/// views and column-major containers. Not copyable: the map may point into the copy.
template <class T, std::size_t N>
class input_tensor {
 public:
  template <class E>
  explicit input_tensor(const E& e) : map_(map_over<N, const_map_t<T, N>>(start(e, copy_), e)) {}
  input_tensor(const input_tensor&) = delete;
  input_tensor& operator=(const input_tensor&) = delete;

  const const_map_t<T, N>& map() const noexcept { return map_; }
  /// True when the operand had to be copied (it was not dense row-major memory).
  bool copied() const noexcept { return copy_.size() != 0; }

 private:
  template <class E>
  static const T* start(const E& e, ::xt::xtensor<T, N>& copy) {
    if constexpr (has_strided_memory<const E>::value) {
      if (is_row_major_dense<N>(e)) return e.data() + e.data_offset();
    }
    copy = e;
    return copy.data();
  }

  ::xt::xtensor<T, N> copy_ = ::xt::xtensor<T, N>::from_shape(std::array<std::size_t, N>{});
  const_map_t<T, N> map_;
};

template <class T>
using input_matrix = input_tensor<T, 2>;
template <class T>
using input_vector = input_tensor<T, 1>;

/// A 2-D operand's extents without its data (a map over no memory). The Eigen family's checks,
/// the one place operands are validated, read only extents, so run over these
/// they check xtensor operands too.
template <class T>
using extents_map = Eigen::Map<const row_matrix<T>>;

template <class T, class E>
extents_map<T> shape_only(const E& e) {
  return {nullptr, extent(e, 0), extent(e, 1)};
}

/// Writable row-major map over a destination, after checking its dimensions, shape and layout.
/// Outputs are never copied: a destination that is not dense row-major memory is refused.
template <class T, std::size_t N = 2, class E>
map_t<T, N> writable(const char* operand, E& e, index rows, index cols = 1) {
  static_assert(std::is_same_v<value_type_t<E>, T>,
                "vera::xt: the destination must hold the adapter's scalar type");
  check_dimension<N>(operand, e);
  if constexpr (N == 2) {
    vera::detail::check_shape(operand, rows, cols, extent(e, 0), extent(e, 1));
  } else {
    vera::detail::check_size(operand, rows, extent(e, 0));
  }
  if constexpr (has_strided_memory<E>::value) {
    if (is_row_major_dense<N>(e)) return map_over<N, map_t<T, N>>(e.data() + e.data_offset(), e);
    std::string strides;
    for (std::size_t axis = 0; axis < N; ++axis) {
      strides += (axis == 0 ? "" : ", ") + std::to_string(e.strides()[axis]);
    }
    throw shape_error(std::string(operand) +
                      ": expected dense row-major memory (last axis stride 1, rows one after "
                      "another), got strides (" + strides + "); evaluate into a container");
  } else {
    throw shape_error(std::string(operand) +
                      ": expected a container or a view of one, got an expression without "
                      "memory of its own");
  }
}

/// True for a bias the evaluators take with X stored in S for an adapter<T>: the adapter's T, or
/// S (a bfloat16 layer adds a float32 or a bfloat16 bias).
template <class Bias, class S, class T>
inline constexpr bool bias_fits = std::is_same_v<typename element_of<Bias>::type, T> ||
                                  std::is_same_v<typename element_of<Bias>::type, S>;

/// The scalar a bias is mapped as: its own where bias_fits, otherwise T, so that only the
/// family's static_assert reports it.
template <class Bias, class S, class T>
using bias_storage_t = std::conditional_t<bias_fits<Bias, S, T>, typename element_of<Bias>::type, T>;

/// Calls f with the bias as the evaluators take it: no_bias, or a map over a 1-D operand.
template <class S, class T, class Bias, class F>
void with_bias(const Bias& bias, F&& f) {
  if constexpr (std::is_same_v<std::decay_t<Bias>, no_bias_t>) {
    f(no_bias);
  } else if constexpr (bias_fits<Bias, S, T>) {
    const input_vector<bias_storage_t<Bias, S, T>> mapped(bias);
    f(mapped.map());
  }  // else the family's static_assert has refused the bias: one mistake, one message.
}

/// Bias extents as the Eigen family's check of a forward reads them.
template <class S, class T, class Bias>
auto bias_shape_only(const Bias& bias) {
  if constexpr (std::is_same_v<std::decay_t<Bias>, no_bias_t>) {
    return no_bias;
  } else {
    check_dimension<1>("bias", bias);
    return Eigen::Map<const vera::vector<bias_storage_t<Bias, S, T>>>(nullptr, extent(bias, 0));
  }
}

/// How an expression stores an operand: by const reference to an lvalue, by value for a
/// temporary (xtensor's own closure rule, so a stored expression never dangles).
template <class E>
using closure_t = ::xtl::const_closure_type_t<E>;

/// Overwrites or accumulates an Eigen front-end expression into a row-major map.
template <class Expr, class Dst>
void assign(const Expr& e, Dst& dst, assign_mode mode) {
  if (mode == assign_mode::overwrite) {
    e.evalTo(dst);
  } else {
    e.add_to(dst);
  }
}

}  // namespace detail

}  // namespace vera::xt
