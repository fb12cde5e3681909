// SPDX-License-Identifier: Apache-2.0
// Which adapter each row of a mixed batch goes through: a non-owning view of ints, -1 = base model.
#pragma once

#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief Identifies one adapter of an adapter_set. Ids are never reused, so a stale id is
///        reported as removed instead of silently naming a newer adapter.
using adapter_id = int;

/// \brief Row assignment value for rows that run the base model only.
inline constexpr adapter_id no_adapter = -1;

/// \brief Per-row adapter ids of a mixed batch, viewed without copying.
///
/// Built from a `std::vector<int>`, a contiguous Eigen int vector (VectorXi, a segment, a Map),
/// or `row_assignment::uniform(id, rows)` for "every row uses `id`". Like the matrices an
/// expression names, the ids must outlive the expression that views them.
class row_assignment {
 public:
  /// \brief Views `ids`: one id per row.
  row_assignment(const std::vector<int>& ids)  // NOLINT: implicit so callers can pass ids as they hold them
      : data_(ids.data()), size_(static_cast<index>(ids.size())) {}

  /// \brief Views a contiguous Eigen vector of int (a column or a row).
  /// \throws shape_error for a matrix that is not a vector.
  template <class D>
  row_assignment(const Eigen::DenseBase<D>& ids)  // NOLINT: implicit, as above
      : size_(ids.size()) {
    static_assert(std::is_same_v<typename D::Scalar, int>,
                  "vera::row_assignment: adapter ids must be int (Eigen::VectorXi or std::vector<int>)");
    static_assert((Eigen::internal::traits<D>::Flags & Eigen::DirectAccessBit) != 0 &&
                      D::InnerStrideAtCompileTime == 1,
                  "vera::row_assignment: adapter ids must be contiguous in memory; copy them into an "
                  "Eigen::VectorXi first");
    if (ids.rows() != 1 && ids.cols() != 1) {
      throw shape_error("row assignment: expected a vector of adapter ids, got a " +
                        detail::dims(ids.rows(), ids.cols()) + " matrix");
    }
    data_ = ids.derived().data();
  }

  /// \brief Every one of `rows` rows uses adapter `id` (or the base model when id is no_adapter).
  static row_assignment uniform(adapter_id id, index rows) {
    row_assignment all;
    all.size_ = rows;
    all.uniform_ = id;
    return all;
  }

  /// \brief Number of rows the assignment covers.
  index size() const noexcept { return size_; }
  /// \brief True for an assignment made by uniform().
  bool is_uniform() const noexcept { return data_ == nullptr; }
  /// \brief The adapter id of `row` (no_adapter for a base-model row); `row` is not checked.
  adapter_id operator[](index row) const noexcept { return data_ != nullptr ? data_[row] : uniform_; }

 private:
  row_assignment() = default;

  const int* data_ = nullptr;
  index size_ = 0;
  adapter_id uniform_ = no_adapter;
};

}  // namespace vera
