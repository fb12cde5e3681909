// SPDX-License-Identifier: Apache-2.0
// Turns a row assignment into per-row columns of an adapter set, rejecting unknown ids first.
#pragma once

#include <string>

#include "vera/adapter/adapter_set.hpp"
#include "vera/adapter/row_assignment.hpp"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"

namespace vera {

namespace detail {

/// \brief What a batch's rows use, found while resolving them.
struct resolved_rows {
  index adapter_rows = 0;    ///< rows that go through an (enabled) adapter
  index single_column = -1;  ///< the one column every adapter row uses; -1 if none or several
  bool dropout = false;      ///< some adapter row belongs to an adapter with dropout > 0
};

inline std::string bad_row_message(const char* operation, index row, adapter_id id,
                                   const std::string& why) {
  return std::string(operation) + ": row assignment: row " + std::to_string(row) +
         ": expected -1 (base model) or the id of an adapter in the set, got " + std::to_string(id) +
         " (" + why + ")";
}

/// \brief Checks that `ids` has `rows` elements, each no_adapter or an id in `set`, and writes
///        each row's column (or -1 for the base model and for disabled adapters) to `columns`
///        when it is not null.
///
/// Throws shape_error for a wrong count and value_error naming the first bad row, before
/// anything is written to `columns`.
template <class T>
resolved_rows resolve_rows(const adapter_set<T>& set, const row_assignment& ids, index rows,
                           index* columns, const char* operation) {
  if (ids.size() != rows) {
    throw shape_error(std::string(operation) + ": row assignment: expected " + std::to_string(rows) +
                      " adapter ids (rows of the batch), got " + std::to_string(ids.size()));
  }
  resolved_rows summary;
  bool several = false;
  const auto column_for = [&](index row) -> index {
    const adapter_id id = ids[row];
    if (id == no_adapter) return -1;
    if (!set.contains(id)) {
      const std::string why = id < 0 ? "negative" : set.describe_missing(id);
      throw value_error(detail::bad_row_message(operation, row, id, why));
    }
    const index column = set.column(id);
    return set.column_active(column) ? column : -1;
  };
  if (ids.is_uniform() && rows > 0) {
    const index column = column_for(0);
    if (columns != nullptr) {
      for (index i = 0; i < rows; ++i) columns[i] = column;
    }
    if (column >= 0) {
      summary.adapter_rows = rows;
      summary.single_column = column;
      summary.dropout = set.column_options(column).dropout > 0.0;
    }
    return summary;
  }
  // Validate every row before writing any, so that a bad id leaves `columns` untouched.
  for (index i = 0; i < rows; ++i) (void)column_for(i);
  for (index i = 0; i < rows; ++i) {
    const index column = column_for(i);
    if (columns != nullptr) columns[i] = column;
    if (column < 0) continue;
    ++summary.adapter_rows;
    if (set.column_options(column).dropout > 0.0) summary.dropout = true;
    if (summary.adapter_rows == 1) {
      summary.single_column = column;
    } else if (column != summary.single_column) {
      several = true;
    }
  }
  if (several) summary.single_column = -1;
  return summary;
}

}  // namespace detail

}  // namespace vera
