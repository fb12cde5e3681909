// SPDX-License-Identifier: Apache-2.0
// Many VeRA adapters of one layer over one shared projection, stored column by column.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/options.hpp"
#include "vera/adapter/projection.hpp"
#include "vera/adapter/row_assignment.hpp"
#include "vera/core/error.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief What every adapter of a set shares: the rank and the storage layout of W0.
struct adapter_set_options {
  index rank = 0;               ///< 0 means the projection's rank
  bool fan_in_fan_out = false;  ///< W0 stored as in x out (GPT-2 Conv1D)
};

/// \brief The adapters of one adapted linear layer (in, out, rank) over one shared projection.
///
/// All lambda_b vectors form one out x k matrix and all lambda_d vectors one rank x k matrix,
/// one column per adapter, so a mixed batch gathers a row's vectors with one offset. An adapter
/// keeps its column for its whole life; remove() frees the column and a later add() may reuse
/// it (reset any per-column optimizer state then). Ids are never reused.
///
/// Each adapter has its own adapter_options (initialisation, frozen vectors, dropout), an
/// enabled flag (a disabled adapter acts as the base model) and a scale that multiplies its
/// update. One adapter may be merged into W0 at a time; while it is, mixed expressions refuse
/// to run, since the merged W0 would add it to every row. merge() and unmerge() run the merge
/// expressions and are defined with them, in vera/expr/set_merge.hpp (included by
/// <vera/multi.hpp>).
template <class T>
class adapter_set {
 public:
  using scalar = T;  ///< Element type, float or double.
  /// Column-major storage of the b and d columns.
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  /// One adapter's vector, writable.
  using column_view = Eigen::Block<matrix, Eigen::Dynamic, 1, true>;
  /// One adapter's vector, read-only.
  using const_column_view = Eigen::Block<const matrix, Eigen::Dynamic, 1, true>;
  /// Every adapter's vectors, writable.
  using columns_view = Eigen::Block<matrix, Eigen::Dynamic, Eigen::Dynamic, true>;
  /// Every adapter's vectors, read-only.
  using const_columns_view = Eigen::Block<const matrix, Eigen::Dynamic, Eigen::Dynamic, true>;

  /// \brief An empty set for a layer with `in` inputs and `out` outputs.
  ///
  /// \throws shape_error when in/out exceed the projection; rank_error when the rank does;
  ///         value_error for a negative layout rank or non-positive in/out.
  adapter_set(projection<T> shared, index in_features, index out_features,
              const adapter_set_options& layout = {})
      : projection_(std::move(shared)), layout_(layout) {
    if (layout_.rank < 0) {
      throw value_error("adapter_set_options.rank: expected >= 0, got " + std::to_string(layout_.rank));
    }
    in_ = in_features;
    out_ = out_features;
    rank_ = layout_.rank == 0 ? projection_.rank() : layout_.rank;
    layout_.rank = rank_;
    (void)projection_.a(in_, rank_);
    (void)projection_.b(out_, rank_);
    lambda_b_.resize(out_, 0);
    lambda_d_.resize(rank_, 0);
  }

  /// \brief Input features of the layer (columns of X).
  index in_features() const noexcept { return in_; }
  /// \brief Output features of the layer (rows of the lambda_b matrix).
  index out_features() const noexcept { return out_; }
  /// \brief Rank shared by every adapter (rows of the lambda_d matrix).
  index rank() const noexcept { return rank_; }
  /// \brief True when W0 is stored in x out.
  bool fan_in_fan_out() const noexcept { return layout_.fan_in_fan_out; }
  /// \brief Handle of the shared projection.
  const projection<T>& shared_projection() const noexcept { return projection_; }
  /// \brief The layer's A: rank x in, shared by every adapter of the set.
  typename projection<T>::a_block a() const { return projection_.a(in_, rank_); }
  /// \brief The layer's B: out x rank, shared by every adapter of the set.
  typename projection<T>::b_block b() const { return projection_.b(out_, rank_); }

  /// \brief Adds an adapter initialised as `options` says and returns its id.
  ///
  /// options.rank must be 0 or the set's rank (rank_error) and options.fan_in_fan_out must match
  /// the set's layout (value_error). The first adapter added becomes the active one. Adding may
  /// grow the b and d matrices, which invalidates views returned earlier.
  /// \throws rank_error, value_error as above; value_error for bad options (see
  ///         validate(const adapter_options&)) or when no ids are left.
  adapter_id add(const adapter_options& options = {}) {
    if (options.rank != 0 && options.rank != rank_) {
      throw rank_error("adapter_options.rank: expected 0 or the set's rank " + std::to_string(rank_) +
                       ", got " + std::to_string(options.rank));
    }
    if (options.fan_in_fan_out != layout_.fan_in_fan_out) {
      throw value_error(std::string("adapter_options.fan_in_fan_out: expected ") +
                        (layout_.fan_in_fan_out ? "true" : "false") + " (the set's W0 layout), got " +
                        (options.fan_in_fan_out ? "true" : "false"));
    }
    if (id_to_column_.size() >= static_cast<std::size_t>(std::numeric_limits<adapter_id>::max())) {
      throw value_error("adapter_set::add: no adapter ids left");
    }
    adapter_options stored = options;
    stored.rank = rank_;
    // The core adapter initialises the vectors, so a set adapter starts exactly as a standalone one.
    const adapter<T> initial(projection_, in_, out_, stored);

    const index column = take_free_column();
    const auto id = static_cast<adapter_id>(id_to_column_.size());
    id_to_column_.push_back(column);
    columns_[static_cast<std::size_t>(column)] = entry{id, stored, T(1), true};
    lambda_b_.col(column) = initial.lambda_b();
    lambda_d_.col(column) = initial.lambda_d();
    ++live_;
    ++version_;
    if (active_ == no_adapter) active_ = id;
    return id;
  }

  /// \brief Removes adapter `id` and frees its column.
  /// \throws value_error for an id not in the set; state_error while it is merged.
  void remove(adapter_id id) {
    const index column = column_of(id, "adapter_set::remove");
    if (merged_id_ == id) {
      throw state_error("adapter_set::remove: adapter " + std::to_string(id) +
                        " is merged into W0; unmerge it first");
    }
    columns_[static_cast<std::size_t>(column)] = entry{};
    lambda_b_.col(column).setZero();
    lambda_d_.col(column).setZero();
    id_to_column_[static_cast<std::size_t>(id)] = -1;
    --live_;
    ++version_;
    if (active_ == id) active_ = no_adapter;
  }

  /// \brief True when `id` names an adapter currently in the set.
  bool contains(adapter_id id) const noexcept {
    return id >= 0 && static_cast<std::size_t>(id) < id_to_column_.size() &&
           id_to_column_[static_cast<std::size_t>(id)] >= 0;
  }
  /// \brief Adapters currently in the set.
  index size() const noexcept { return live_; }
  /// \brief k: columns of the b and d matrices (adapters plus freed columns awaiting reuse).
  index columns() const noexcept { return static_cast<index>(columns_.size()); }
  /// \brief The column holding adapter `id`; throws value_error for an id not in the set.
  index column(adapter_id id) const { return column_of(id, "adapter_set::column"); }
  /// \brief The adapter in `column`, or no_adapter for a free column.
  /// \throws value_error for a column outside [0, columns()).
  adapter_id id_at(index column) const {
    if (column < 0 || column >= columns()) {
      throw value_error("adapter_set::id_at: expected a column in [0, " + std::to_string(columns()) +
                        "), got " + std::to_string(column));
    }
    return columns_[static_cast<std::size_t>(column)].id;
  }
  /// \brief Ids of the adapters in the set, in column order.
  std::vector<adapter_id> ids() const {
    std::vector<adapter_id> live;
    for (const entry& e : columns_) {
      if (e.id != no_adapter) live.push_back(e.id);
    }
    return live;
  }

  /// \brief Settings adapter `id` was added with (rank filled in).
  /// \throws value_error for an id not in the set.
  const adapter_options& options(adapter_id id) const {
    return columns_[static_cast<std::size_t>(column_of(id, "adapter_set::options"))].options;
  }
  /// \brief Settings of the adapter in `column` (default settings for a free column).
  ///        `column` must be in [0, columns()); it is not checked.
  const adapter_options& column_options(index column) const noexcept {
    return columns_[static_cast<std::size_t>(column)].options;
  }

  /// \brief Enables or disables adapter `id`; a disabled adapter acts as the base model and gets
  ///        no gradient.
  /// \throws value_error for an id not in the set; state_error when disabling the merged
  ///         adapter.
  void set_enabled(adapter_id id, bool enabled) {
    set_enabled_as(id, enabled, "adapter_set::set_enabled");
  }
  /// \brief set_enabled(id, true).
  /// \throws value_error for an id not in the set.
  void enable(adapter_id id) { set_enabled_as(id, true, "adapter_set::enable"); }
  /// \brief set_enabled(id, false).
  /// \throws value_error for an id not in the set; state_error for the merged adapter.
  void disable(adapter_id id) { set_enabled_as(id, false, "adapter_set::disable"); }
  /// \brief Whether adapter `id` is enabled.
  /// \throws value_error for an id not in the set.
  bool enabled(adapter_id id) const {
    return columns_[static_cast<std::size_t>(column_of(id, "adapter_set::enabled"))].enabled;
  }

  /// \brief Multiplies adapter `id`'s update by `scale` (default 1).
  /// \throws value_error for an id not in the set or a scale that is not finite.
  void set_scale(adapter_id id, T scale) {
    const index column = column_of(id, "adapter_set::set_scale");
    if (!std::isfinite(static_cast<double>(scale))) {
      throw value_error("adapter_set::set_scale: expected a finite scale, got " +
                        std::to_string(static_cast<double>(scale)));
    }
    columns_[static_cast<std::size_t>(column)].scale = scale;
  }
  /// \brief The scale of adapter `id` (1 unless set_scale changed it).
  /// \throws value_error for an id not in the set.
  T scale(adapter_id id) const {
    return columns_[static_cast<std::size_t>(column_of(id, "adapter_set::scale"))].scale;
  }
  /// \brief Scale of the adapter in `column` (1 for a free column); `column` is not checked.
  T column_scale(index column) const noexcept { return columns_[static_cast<std::size_t>(column)].scale; }
  /// \brief Whether the adapter in `column` is in the set and enabled; `column` is not checked.
  bool column_active(index column) const noexcept {
    const entry& e = columns_[static_cast<std::size_t>(column)];
    return e.id != no_adapter && e.enabled;
  }

  /// \brief Makes `id` the adapter of single-adapter calls (no row assignment); no_adapter
  ///        selects the base model.
  /// \throws value_error for an id (other than no_adapter) not in the set.
  void select(adapter_id id) {
    if (id != no_adapter) (void)column_of(id, "adapter_set::select");
    active_ = id;
  }
  /// \brief The adapter single-adapter calls use, or no_adapter.
  adapter_id active() const noexcept { return active_; }

  /// \brief lambda_b of adapter `id`: out elements, writable in place.
  /// \throws value_error for an id not in the set.
  column_view lambda_b(adapter_id id) { return lambda_b_.col(column_of(id, "adapter_set::lambda_b")); }
  /// \brief lambda_b of adapter `id`, read-only.
  /// \throws value_error for an id not in the set.
  const_column_view lambda_b(adapter_id id) const {
    return lambda_b_.col(column_of(id, "adapter_set::lambda_b"));
  }
  /// \brief lambda_d of adapter `id`: rank elements, writable in place.
  /// \throws value_error for an id not in the set.
  column_view lambda_d(adapter_id id) { return lambda_d_.col(column_of(id, "adapter_set::lambda_d")); }
  /// \brief lambda_d of adapter `id`, read-only.
  /// \throws value_error for an id not in the set.
  const_column_view lambda_d(adapter_id id) const {
    return lambda_d_.col(column_of(id, "adapter_set::lambda_d"));
  }
  /// \brief Every lambda_b, out x k (column c belongs to id_at(c); free columns are zero).
  ///        Writable, e.g. for one optimizer step over all adapters.
  columns_view lambda_b_matrix() noexcept { return lambda_b_.leftCols(columns()); }
  /// \brief Every lambda_b, out x k, read-only.
  const_columns_view lambda_b_matrix() const noexcept { return lambda_b_.leftCols(columns()); }
  /// \brief Every lambda_d, rank x k.
  columns_view lambda_d_matrix() noexcept { return lambda_d_.leftCols(columns()); }
  /// \brief Every lambda_d, rank x k, read-only.
  const_columns_view lambda_d_matrix() const noexcept { return lambda_d_.leftCols(columns()); }

  /// \brief Replaces both vectors of adapter `id` (b: out elements, d: rank elements) after
  ///        checking sizes and finiteness; on error nothing changes.
  /// \throws value_error for an id not in the set or a non-finite element; shape_error for a
  ///         vector of the wrong size.
  template <class DB, class DD>
  void set_lambdas(adapter_id id, const Eigen::MatrixBase<DB>& b, const Eigen::MatrixBase<DD>& d) {
    const index column = column_of(id, "adapter_set::set_lambdas");
    vera::detail::check_size("lambda_b", out_, b.size());
    vera::detail::check_size("lambda_d", rank_, d.size());
    require_finite("lambda_b", b);
    require_finite("lambda_d", d);
    lambda_b_.col(column) = b.template cast<T>();
    lambda_d_.col(column) = d.template cast<T>();
  }

  /// \brief A standalone vera::adapter equal to adapter `id`, its scale folded into lambda_b, for
  ///        the core's single-adapter calls (forward, gradients, merge, file I/O).
  /// \throws value_error for an id not in the set, or when a scaled lambda_b element is not
  ///         finite.
  adapter<T> to_adapter(adapter_id id) const {
    const index column = column_of(id, "adapter_set::to_adapter");
    const entry& e = columns_[static_cast<std::size_t>(column)];
    adapter<T> single(projection_, in_, out_, e.options);
    single.set_lambdas(e.scale * lambda_b_.col(column), lambda_d_.col(column));
    return single;
  }

  /// \brief W0 += ΔW of adapter `id` (its scale included), with safe-merge semantics: W0 is left
  ///        unchanged if any merged element would not be finite (value_error).
  ///
  /// W0 is out x in (in x out with fan_in_fan_out). The delta merged is remembered, so unmerge()
  /// subtracts exactly it even if the adapter's vectors or scale change meanwhile.
  /// \throws state_error when another adapter is merged or `id` is disabled; value_error for an
  ///         id not in the set or a non-finite merged element; shape_error for W0 of another
  ///         shape.
  template <class WD>
  void merge(Eigen::MatrixBase<WD>& w0, adapter_id id);
  /// \brief Merges the active adapter, as merge(w0, active()).
  /// \throws state_error when none is active; otherwise as the other overload.
  template <class WD>
  void merge(Eigen::MatrixBase<WD>& w0) {
    if (active_ == no_adapter) throw state_error("adapter_set::merge: no adapter is active");
    merge(w0, active_);
  }
  /// \brief W0 -= the merged delta.
  /// \throws state_error when nothing is merged; shape_error for W0 of another shape.
  template <class WD>
  void unmerge(Eigen::MatrixBase<WD>& w0);
  /// \brief The merged adapter, or no_adapter.
  adapter_id merged() const noexcept { return merged_id_; }

  /// \brief Changes whenever the row-to-column mapping may change (add, remove, enable, disable),
  ///        so a training context can tell that it no longer matches the set.
  std::uint64_t version() const noexcept { return version_; }

  /// \brief Why `id` is not usable: "removed", "never added ..." or "" when it is in the set.
  std::string describe_missing(adapter_id id) const {
    if (contains(id)) return {};
    if (id >= 0 && static_cast<std::size_t>(id) < id_to_column_.size()) return "removed";
    if (id_to_column_.empty()) return "never added; the set has had no adapters";
    return "never added; ids so far are 0.." + std::to_string(id_to_column_.size() - 1);
  }

 private:
  struct entry {
    adapter_id id = no_adapter;
    adapter_options options;
    T scale = T(1);
    bool enabled = false;
  };

  index column_of(adapter_id id, const char* operation) const {
    if (!contains(id)) {
      throw value_error(std::string(operation) + ": adapter id " + std::to_string(id) +
                        " is not in the set (" + describe_missing(id) + ")");
    }
    return id_to_column_[static_cast<std::size_t>(id)];
  }

  // `operation` is the public function the caller used, so that errors name it.
  void set_enabled_as(adapter_id id, bool enabled, const char* operation) {
    const index column = column_of(id, operation);
    if (!enabled && merged_id_ == id) {
      throw state_error(std::string(operation) + ": adapter " + std::to_string(id) +
                        " is merged into W0; unmerge it first");
    }
    entry& e = columns_[static_cast<std::size_t>(column)];
    if (e.enabled != enabled) ++version_;
    e.enabled = enabled;
  }

  // The lowest free column, so that column numbers stay small and deterministic.
  index take_free_column() {
    for (std::size_t c = 0; c < columns_.size(); ++c) {
      if (columns_[c].id == no_adapter) return static_cast<index>(c);
    }
    const index column = columns();
    if (column == lambda_b_.cols()) {
      // Geometric growth keeps adding k adapters O(k) amortised; views returned earlier are invalidated.
      const index capacity = std::max<index>(4, 2 * column);
      lambda_b_.conservativeResize(out_, capacity);
      lambda_d_.conservativeResize(rank_, capacity);
    }
    columns_.emplace_back();
    return column;
  }

  template <class D>
  static void require_finite(const char* name, const Eigen::MatrixBase<D>& v) {
    for (index i = 0; i < v.size(); ++i) {
      if (!std::isfinite(static_cast<double>(v(i)))) {
        throw value_error(std::string(name) + ": element " + std::to_string(i) + " is not finite");
      }
    }
  }

  projection<T> projection_;
  adapter_set_options layout_;
  index in_ = 0;
  index out_ = 0;
  index rank_ = 0;
  matrix lambda_b_;  // out x capacity; the first columns() are in use
  matrix lambda_d_;  // rank x capacity
  std::vector<entry> columns_;
  std::vector<index> id_to_column_;  // -1 once removed
  index live_ = 0;
  adapter_id active_ = no_adapter;
  adapter_id merged_id_ = no_adapter;
  std::optional<adapter<T>> merged_;
  std::uint64_t version_ = 0;
};

}  // namespace vera
