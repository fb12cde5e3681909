// SPDX-License-Identifier: Apache-2.0
// adapter_set::merge and unmerge, defined with the merge expressions they run, so that the set's
// state (vera/adapter/adapter_set.hpp) includes no expression.
#pragma once

#include <string>
#include <utility>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/adapter_set.hpp"
#include "vera/core/error.hpp"
#include "vera/expr/merge.hpp"

namespace vera {

template <class T>
template <class WD>
void adapter_set<T>::merge(Eigen::MatrixBase<WD>& w0, adapter_id id) {
  (void)column_of(id, "adapter_set::merge");
  if (merged_id_ != no_adapter) {
    throw state_error("adapter_set::merge: adapter " + std::to_string(merged_id_) +
                      " is already merged into W0; unmerge it first");
  }
  if (!enabled(id)) {
    throw state_error("adapter_set::merge: adapter " + std::to_string(id) + " is disabled");
  }
  adapter<T> delta = to_adapter(id);
  vera::safe_merge(w0, delta);
  merged_.emplace(std::move(delta));
  merged_id_ = id;
}

template <class T>
template <class WD>
void adapter_set<T>::unmerge(Eigen::MatrixBase<WD>& w0) {
  if (merged_id_ == no_adapter) throw state_error("adapter_set::unmerge: no adapter is merged");
  vera::unmerge(w0, *merged_);
  merged_.reset();
  merged_id_ = no_adapter;
}

}  // namespace vera
