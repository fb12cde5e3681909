// SPDX-License-Identifier: Apache-2.0
// Building blocks of the mixed-batch CPU evaluators: row plans, gathers, segment sums, dropout.
#pragma once

#include <algorithm>

#include <Eigen/Core>

#include "vera/adapter/adapter_set.hpp"
#include "vera/adapter/mixed_context.hpp"
#include "vera/adapter/mixed_gradients.hpp"
#include "vera/adapter/mixed_workspace.hpp"
#include "vera/backend/cpu/common.hpp"
#include "vera/backend/cpu/gemm.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/core/dropout.hpp"

namespace vera::detail::cpu::mixed {

/// Matrix slots of mixed_workspace; each evaluator uses each slot for one purpose at a time.
enum slot : int {
  slot_wide = 0,       // n x out: Z = S B^T, G ⊙ b, Q; or a merged weight (out x in)
  slot_thin = 1,       // n x rank: S (forward); T, then U = T ⊙ s d (backward)
  slot_projected = 2,  // n x rank: P when no context holds it; S (backward)
  slot_tile = 3,       // dropout tile, rows x in
  slot_small = 4,      // out x rank: one adapter's folded s Λb B Λd
  slot_rows = 5,       // a zero vector and per-row scales
  slot_sums = 6,       // (adapters + 1) x width segment sums; M = G^T P for one adapter
  slot_gather = 7,     // rows x gather_width: gathered vector elements, row by row
};

/// Columns gathered per block in the row-by-row passes: each row's 16 consecutive elements are
/// one vector load, and the block is then applied with vectorised column operations.
inline constexpr index gather_width = 16;

/// Index and pointer slots of mixed_workspace.
enum index_slot : int { indices_columns = 0, indices_dense = 1, indices_runs = 2 };
enum pointer_slot : int { pointers_b = 0, pointers_d = 1 };

/// The caller's mixed workspace, or a local one for a single call.
template <class T>
using scratch = cpu::scratch<T, mixed_workspace<T>>;

/// How a batch's rows map onto the set, arranged for the passes: runs of consecutive rows with
/// the same column, each adapter's dense index among those present (the row of its segment
/// sums; base-model rows use the extra last row, which is discarded), and per-row pointers for
/// the passes that go row by row. Base-model rows see zero vectors and scale 0, so no pass
/// branches on them.
template <class T>
class row_plan {
 public:
  row_plan(const adapter_set<T>& set, const index* columns, index rows, mixed_workspace<T>& ws)
      : set_(&set), columns_(columns), rows_(rows) {
    const index out = set.out_features();
    const index rank = set.rank();
    const index width = std::max(out, rank);
    auto per_row = ws.get(slot_rows, width + rows, 1);
    zeros_ = per_row.data();
    std::fill(per_row.data(), per_row.data() + width, T(0));
    b_data_ = set.lambda_b_matrix().data();
    d_data_ = set.lambda_d_matrix().data();

    // Dense indices: one pass with a column -> index table kept in the index buffer's tail.
    index* dense = ws.indices(indices_dense, 2 * rows + set.columns());
    index* present = dense + rows;
    index* table = present + rows;
    std::fill(table, table + set.columns(), index{-1});
    for (index i = 0; i < rows; ++i) {
      const index c = columns[i];
      if (c < 0) continue;
      if (table[c] < 0) {
        table[c] = present_count_;
        present[present_count_++] = c;
      }
    }
    for (index i = 0; i < rows; ++i) dense[i] = columns[i] >= 0 ? table[columns[i]] : present_count_;
    dense_ = dense;
    present_ = present;
    column_dense_ = table;

    index* runs = ws.indices(indices_runs, 2 * rows);
    for (index i = 0; i < rows;) {
      index last = i + 1;
      while (last < rows && columns[last] == columns[i]) ++last;
      runs[2 * run_count_] = i;
      runs[2 * run_count_ + 1] = last;
      ++run_count_;
      i = last;
    }
    runs_ = runs;
    by_runs_ = passes_by_runs(rows, run_count_);

    // Per-row pointers also serve the run-by-run mode's row-major fallbacks; they cost O(n).
    const T** row_b = ws.pointers(pointers_b, rows);
    const T** row_d = ws.pointers(pointers_d, rows);
    T* row_scale = per_row.data() + width;
    for (index i = 0; i < rows; ++i) {
      row_b[i] = b(columns[i]);
      row_d[i] = d(columns[i]);
      row_scale[i] = scale(columns[i]);
    }
    row_b_ = row_b;
    row_d_ = row_d;
    row_scale_ = row_scale;

    // An odd number of 16-element groups per column keeps the block's columns in different
    // cache sets; a multiple of 4 KiB (n = 1024 floats) would make them all collide.
    gather_stride_ = (rows + 15) / 16 * 16;
    if ((gather_stride_ / 16) % 2 == 0) gather_stride_ += 16;
    gather_ = ws.get(slot_gather, gather_stride_ * gather_width, 1).data();
  }

  index rows() const noexcept { return rows_; }
  /// Adapters with rows in the batch (m); base-model rows use segment-sum row m.
  index present() const noexcept { return present_count_; }
  index present_column(index u) const noexcept { return present_[u]; }
  index dense(index row) const noexcept { return dense_[row]; }
  /// The dense index of the adapter in `column`, or -1 when it has no rows in the batch.
  index column_dense(index column) const noexcept { return column_dense_[column]; }

  bool by_runs() const noexcept { return by_runs_; }
  index runs() const noexcept { return run_count_; }
  index run_first(index r) const noexcept { return runs_[2 * r]; }
  index run_length(index r) const noexcept { return runs_[2 * r + 1] - runs_[2 * r]; }
  index run_column(index r) const noexcept { return columns_[runs_[2 * r]]; }
  index run_dense(index r) const noexcept { return dense_[runs_[2 * r]]; }

  const T* b(index column) const noexcept { return column >= 0 ? b_data_ + column * set_->out_features() : zeros_; }
  const T* d(index column) const noexcept { return column >= 0 ? d_data_ + column * set_->rank() : zeros_; }
  T scale(index column) const noexcept { return column >= 0 ? set_->column_scale(column) : T(0); }

  // Row by row.
  const T* row_b(index row) const noexcept { return row_b_[row]; }
  const T* row_d(index row) const noexcept { return row_d_[row]; }
  T row_scale(index row) const noexcept { return row_scale_[row]; }

  /// Calls f(first, block) for blocks of up to gather_width columns of a rows x cols matrix
  /// whose row i is vector(i), with block(i, q) = vector(i)[first + q] (times row_scale(i)
  /// when `scaled`). One gathered block is live at a time.
  template <class Vector, class F>
  void gathered_blocks(index cols, Vector&& vector, bool scaled, F&& f) const {
    using strided = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>, 0, Eigen::OuterStride<>>;
    for (index first = 0; first < cols; first += gather_width) {
      const index width = std::min(gather_width, cols - first);
      strided block(gather_, rows_, width, Eigen::OuterStride<>(gather_stride_));
      for (index i = 0; i < rows_; ++i) {
        const T* source = vector(i) + first;
        const T factor = scaled ? row_scale_[i] : T(1);
        for (index q = 0; q < width; ++q) block(i, q) = source[q] * factor;
      }
      f(first, block);
    }
  }

 private:
  const adapter_set<T>* set_;
  const index* columns_;
  index rows_;
  const T* zeros_ = nullptr;
  const T* b_data_ = nullptr;
  const T* d_data_ = nullptr;
  const index* dense_ = nullptr;
  const index* present_ = nullptr;
  const index* column_dense_ = nullptr;
  index present_count_ = 0;
  const index* runs_ = nullptr;
  index run_count_ = 0;
  bool by_runs_ = false;
  const T* const* row_b_ = nullptr;
  const T* const* row_d_ = nullptr;
  const T* row_scale_ = nullptr;
  T* gather_ = nullptr;
  index gather_stride_ = 0;
};

template <class M>
inline constexpr bool row_major = (Eigen::internal::traits<M>::Flags & Eigen::RowMajorBit) != 0;

/// Visits every (i, j) of a rows x cols matrix in the order its storage runs.
template <bool RowMajor, class F>
void for_each_coeff(index rows, index cols, F&& f) {
  if constexpr (RowMajor) {
    for (index i = 0; i < rows; ++i) {
      for (index j = 0; j < cols; ++j) f(i, j);
    }
  } else {
    for (index j = 0; j < cols; ++j) {
      for (index i = 0; i < rows; ++i) f(i, j);
    }
  }
}

/// Calls f(j, r) for every column j and run r: the loop order of the run-by-run passes, which
/// walk each column of column-major operands in storage order.
template <class T, class F>
void for_each_run(const row_plan<T>& plan, index cols, F&& f) {
  for (index j = 0; j < cols; ++j) {
    for (index r = 0; r < plan.runs(); ++r) f(j, r);
  }
}

/// dst(i, j) = src(i, j) b_a(i)[j]: scales row i by its adapter's lambda_b (0 for base rows).
template <class Src, class Dst, class T>
void scale_by_b(const Src& src, const row_plan<T>& plan, Dst& dst) {
  if (plan.by_runs() && !row_major<Dst>) {
    for_each_run(plan, src.cols(), [&](index j, index r) {
      const T factor = plan.b(plan.run_column(r))[j];
      dst.col(j).segment(plan.run_first(r), plan.run_length(r)) =
          factor * src.col(j).segment(plan.run_first(r), plan.run_length(r));
    });
    return;
  }
  if constexpr (!row_major<Dst>) {
    plan.gathered_blocks(src.cols(), [&](index i) { return plan.row_b(i); }, false,
                         [&](index first, const auto& block) {
                           dst.middleCols(first, block.cols()) =
                               src.middleCols(first, block.cols()).cwiseProduct(block);
                         });
    return;
  }
  for_each_coeff<true>(src.rows(), src.cols(), [&](index i, index j) {
    dst(i, j) = src(i, j) * plan.row_b(i)[j];
  });
}

/// dst(i, j) += src(i, j) b_a(i)[j]; base-model rows are left alone.
template <class Src, class Dst, class T>
void add_scaled_by_b(const Src& src, const row_plan<T>& plan, Dst& dst) {
  if (plan.by_runs() && !row_major<Dst>) {
    for_each_run(plan, src.cols(), [&](index j, index r) {
      const index column = plan.run_column(r);
      if (column < 0) return;
      dst.col(j).segment(plan.run_first(r), plan.run_length(r)) +=
          plan.b(column)[j] * src.col(j).segment(plan.run_first(r), plan.run_length(r));
    });
    return;
  }
  if constexpr (!row_major<Dst>) {
    plan.gathered_blocks(src.cols(), [&](index i) { return plan.row_b(i); }, false,
                         [&](index first, const auto& block) {
                           dst.middleCols(first, block.cols()) +=
                               src.middleCols(first, block.cols()).cwiseProduct(block);
                         });
    return;
  }
  for_each_coeff<true>(src.rows(), src.cols(), [&](index i, index j) {
    dst(i, j) += src(i, j) * plan.row_b(i)[j];
  });
}

/// One pass over n x rank that does what the rank side of a mixed step needs:
///   sums(u, k) += Σ_{i in u} t(i, k) p(i, k)   (when `sums`; grad_d before the adapter's scale)
///   s(i, k)     = p(i, k) s_a d_a[k]           (when `s`; S, whose product with B^T is Q)
///   t(i, k)    *= s_a d_a[k]                   (when `t` and `scale_t`; U, for dX)
/// With `s` only, t may be null. Base-model rows give zeros and sum into the discarded row.
template <class P, class T, class Thin, class Sums>
void rank_pass(const P& p, const row_plan<T>& plan, Thin* t, bool scale_t, Sums* sums, Thin* s) {
  if (plan.by_runs()) {
    for_each_run(plan, p.cols(), [&](index k, index r) {
      const index column = plan.run_column(r);
      const index first = plan.run_first(r);
      const index length = plan.run_length(r);
      const T factor = plan.scale(column) * plan.d(column)[k];
      if (sums != nullptr && column >= 0) {
        (*sums)(plan.run_dense(r), k) += t->col(k).segment(first, length).dot(p.col(k).segment(first, length));
      }
      if (s != nullptr) s->col(k).segment(first, length) = factor * p.col(k).segment(first, length);
      if (scale_t) t->col(k).segment(first, length) *= factor;
    });
    return;
  }
  plan.gathered_blocks(p.cols(), [&](index i) { return plan.row_d(i); }, true,
                       [&](index first, const auto& factors) {
    const index width = factors.cols();
    if (sums != nullptr) {
      for (index q = 0; q < width; ++q) {
        for (index i = 0; i < p.rows(); ++i) (*sums)(plan.dense(i), first + q) += (*t)(i, first + q) * p(i, first + q);
      }
    }
    if (s != nullptr) s->middleCols(first, width) = p.middleCols(first, width).cwiseProduct(factors);
    if (scale_t) t->middleCols(first, width).array() *= factors.array();
  });
}

/// sums(u, j) += Σ_{i in adapter u} x(i, j) y(i, j): per-adapter segment sums of a product.
template <class X, class Y, class Sums, class T>
void segment_sums(const X& x, const Y& y, const row_plan<T>& plan, Sums& sums) {
  if (plan.by_runs() && !row_major<X>) {
    for_each_run(plan, x.cols(), [&](index j, index r) {
      if (plan.run_column(r) < 0) return;
      const index first = plan.run_first(r);
      const index length = plan.run_length(r);
      sums(plan.run_dense(r), j) += x.col(j).segment(first, length).dot(y.col(j).segment(first, length));
    });
    return;
  }
  for_each_coeff<row_major<X>>(x.rows(), x.cols(), [&](index i, index j) {
    sums(plan.dense(i), j) += x(i, j) * y(i, j);
  });
}

/// grad.col(c) (+)= f_c sums.row(u)^T for every adapter present whose vector trains, with
/// f_c = the adapter's scale when `apply_scale`, else 1; assigned on overwrite.
///
/// `sums` is column-major, so one adapter's row is strided by the number of adapters present;
/// reading it row by row misses the cache on every element once a thousand adapters are present.
/// Going a block of adapters at a time reads each column's block contiguously and writes the
/// block's gradient columns as that many sequential streams.
template <class Sums, class T, class Trains, class Grad>
void add_segment_sums(const Sums& sums, const row_plan<T>& plan, bool apply_scale, Trains&& trains,
                      assign_mode mode, Grad& grad) {
  constexpr index block = 16;
  index rows[block];
  index columns[block];
  T factors[block];
  for (index first = 0; first < plan.present(); first += block) {
    const index count = std::min(block, plan.present() - first);
    index live = 0;
    for (index q = 0; q < count; ++q) {
      const index column = plan.present_column(first + q);
      if (!trains(column)) continue;
      rows[live] = first + q;
      columns[live] = column;
      factors[live] = apply_scale ? plan.scale(column) : T(1);
      ++live;
    }
    for (index j = 0; j < sums.cols(); ++j) {
      for (index q = 0; q < live; ++q) {
        const T value = factors[q] * sums(rows[q], j);
        if (mode == assign_mode::overwrite) {
          grad(j, columns[q]) = value;
        } else {
          grad(j, columns[q]) += value;
        }
      }
    }
  }
}

/// On overwrite, zeroes the gradient columns that no pass will assign: those of adapters without
/// rows in the batch, of frozen vectors and of free columns. `assigned(c)` says which will be.
template <class Grad, class Assigned>
void zero_unassigned(Grad& grad, assign_mode mode, Assigned&& assigned) {
  if (mode != assign_mode::overwrite) return;
  for (index c = 0; c < grad.cols(); ++c) {
    if (!assigned(c)) grad.col(c).setZero();
  }
}

/// Row i's dropout probability: its adapter's (0 for base-model rows).
template <class T>
double row_dropout(const adapter_set<T>& set, const index* columns, index row) {
  const index c = columns[row];
  return c >= 0 ? set.column_options(c).dropout : 0.0;
}

/// tile = rows [first, first + tile.rows()) of the adapter input, each row under its adapter's
/// dropout mask and 1 / (1 - p) scale.
template <class Src, class Tile, class T>
void masked_rows(const Src& source, index first, const dropout_key& key, const adapter_set<T>& set,
                 const index* columns, Tile& tile) {
  using S = typename Tile::Scalar;  // T, or bfloat16 (scaled in T, rounded once)
  for (index i = 0; i < tile.rows(); ++i) {
    dropout_key row_key = key;
    row_key.probability = row_dropout(set, columns, first + i);
    if (row_key.probability == 0.0) {
      tile.row(i) = source.row(first + i);
      continue;
    }
    const T keep_scale = static_cast<T>(1.0 / (1.0 - row_key.probability));
    for (index j = 0; j < tile.cols(); ++j) {
      tile(i, j) = dropout_keeps(row_key, first + i, j)
                       ? static_cast<S>(static_cast<T>(source(first + i, j)) * keep_scale)
                       : S(0);
    }
  }
}

/// P = drop(X) a^T, each row under its own adapter's dropout, tile by tile (tiles from
/// `tile_of(rows, cols)`, in X's scalar) so the masked input never exists as a whole n x in matrix.
template <class X, class A, class P, class T, class TileOf>
void project_input(const X& x, const A& a, const adapter_set<T>& set, const index* columns,
                   const dropout_key* key, P& p, TileOf&& tile_of) {
  if (key == nullptr) {
    gemm(p, x, a.transpose(), false);
    return;
  }
  for (index first = 0; first < x.rows(); first += dropout_tile_rows) {
    const index rows = std::min(dropout_tile_rows, x.rows() - first);
    auto tile = tile_of(rows, x.cols());
    masked_rows(x, first, *key, set, columns, tile);
    gemm(p.middleRows(first, rows), tile, a.transpose(), false);
  }
}

/// Where a mixed forward keeps P (n x rank): a training context's step (which also records each
/// row's adapter column for the backward), else workspace scratch when `needed`, else nothing.
template <class T>
Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> forward_projection(mixed_context<T>* ctx,
                                                                                 const index* columns, index n,
                                                                                 index rank, bool needed,
                                                                                 mixed_workspace<T>& ws) {
  if (ctx != nullptr) {
    T* data = ctx->begin_step(n, rank).data();
    std::copy(columns, columns + n, ctx->columns_buffer());
    return {data, n, rank};
  }
  if (needed) return ws.get(slot_projected, n, rank);
  return {nullptr, 0, 0};
}

/// What a backward needs to know of its rows: how many have an adapter, the one they share (or
/// whether there are several), and whether any of them trains b, trains d or drops its input.
struct batch_rows {
  index adapter_rows = 0;
  index single_column = -1;
  bool several = false;
  bool want_b = false;
  bool want_d = false;
  bool dropout = false;
};

template <class T>
batch_rows summarise_rows(const adapter_set<T>& set, const index* columns, index n) {
  batch_rows batch;
  for (index i = 0; i < n; ++i) {
    const index c = columns[i];
    if (c < 0) continue;
    const adapter_options& options = set.column_options(c);
    if (batch.adapter_rows++ == 0) batch.single_column = c;
    batch.several = batch.several || c != batch.single_column;
    batch.want_b = batch.want_b || options.train_b;
    batch.want_d = batch.want_d || options.train_d;
    batch.dropout = batch.dropout || options.dropout > 0.0;
  }
  return batch;
}

/// Applies the same per-row masks (and scales) to a gradient tile in place.
template <class Tile, class T>
void mask_tile(index first, const dropout_key& key, const adapter_set<T>& set, const index* columns,
               Tile& tile) {
  for (index i = 0; i < tile.rows(); ++i) {
    dropout_key row_key = key;
    row_key.probability = row_dropout(set, columns, first + i);
    if (row_key.probability == 0.0) continue;
    const T keep_scale = static_cast<T>(1.0 / (1.0 - row_key.probability));
    for (index j = 0; j < tile.cols(); ++j) {
      tile(i, j) = dropout_keeps(row_key, first + i, j) ? tile(i, j) * keep_scale : T(0);
    }
  }
}

/// dst (+)= src a (a: the set's A, or its bfloat16 copy), with each row's dropout mask on the
/// product when `dropout`.
template <class Src, class A, class T, class Dst>
void add_times_a(const Src& src, const A& a, const adapter_set<T>& set, const index* columns,
                 const dropout_key& key, bool dropout, mixed_workspace<T>& ws, Dst& dst) {
  if (!dropout) {
    gemm(dst, src, a, true);
    return;
  }
  add_masked_product(
      src, a, dst, [&](index rows, index cols) { return ws.get(slot_tile, rows, cols); },
      [&](index first, auto& tile) { mask_tile(first, key, set, columns, tile); });
}

/// The gradient columns the sums below do not write, zeroed on overwrite: adapters without rows
/// in this batch, and vectors they do not train. `grads` may be null.
template <class T>
void zero_untrained(mixed_gradients<T>* grads, const row_plan<T>& plan, const adapter_set<T>& set,
                    const batch_rows& batch, assign_mode mode) {
  if (grads == nullptr) return;
  const auto assigned = [&](bool want, auto trains) {
    return [&plan, want, trains](index c) { return want && plan.column_dense(c) >= 0 && trains(c); };
  };
  zero_unassigned(grads->lambda_b, mode,
                  assigned(batch.want_b, [&set](index c) { return set.column_options(c).train_b; }));
  zero_unassigned(grads->lambda_d, mode,
                  assigned(batch.want_d, [&set](index c) { return set.column_options(c).train_d; }));
}

/// The rank pass and segment sums of a mixed backward, for either storage: grad_d[a] from T ⊙ P,
/// grad_b[a] from G ⊙ Q, with Q as the forward kept it or `make_q(s)` builds it from S (the
/// float32 n x out Q, in whatever layout). `t` holds T when `need_t`; `g` is G in float32 terms.
template <class T, class Ctx, class P, class Thin, class G, class MakeQ>
void gradient_sums(const adapter_set<T>& set, const Ctx& ctx, const P& p, const row_plan<T>& plan,
                   const batch_rows& batch, bool need_t, Thin& t, bool dx_wanted, const G& g, MakeQ&& make_q,
                   mixed_workspace<T>& ws, mixed_gradients<T>* grads, assign_mode mode) {
  const index n = p.rows();
  // S (and from it Q) only when the forward did not keep Q as Z.
  const bool need_s = batch.want_b && !ctx.has_products();
  auto s = ws.get(slot_projected, need_s ? n : 0, set.rank());
  auto d_sums = ws.get(slot_sums, batch.want_d ? plan.present() + 1 : 0, set.rank());
  d_sums.setZero();
  using thin = decltype(s);
  if (need_t || need_s) {
    rank_pass(p, plan, need_t ? &t : static_cast<Thin*>(nullptr), dx_wanted,
              batch.want_d ? &d_sums : static_cast<thin*>(nullptr), need_s ? &s : static_cast<thin*>(nullptr));
  }
  if (batch.want_d) {
    add_segment_sums(d_sums, plan, true, [&](index c) { return set.column_options(c).train_d; }, mode,
                     grads->lambda_d);
  }
  if (batch.want_b) {
    auto b_sums = ws.get(slot_sums, plan.present() + 1, set.out_features());
    b_sums.setZero();
    if (need_s) {
      segment_sums(g, make_q(s), plan, b_sums);
    } else {
      segment_sums(g, ctx.products(), plan, b_sums);
    }
    add_segment_sums(b_sums, plan, false, [&](index c) { return set.column_options(c).train_b; }, mode,
                     grads->lambda_b);
  }
}

/// Calls f with the base weight seen as out x in, whatever its storage layout.
template <class T, class W, class F>
decltype(auto) with_weight(const adapter_set<T>& set, const W& w0, F&& f) {
  if (set.fan_in_fan_out()) return f(w0.transpose());
  return f(w0);
}

/// grad_b[j] (+)= s Σk B[j,k] d[k] M[j,k] and grad_d[k] (+)= s Σj b[j] B[j,k] M[j,k] for the
/// trained vectors of the adapter in `column`, from M = G^T P (out x rank, row-major, so each row
/// pairs with a contiguous row of B) of a batch whose rows all use it. `b` is B as the batch
/// computed with it (bfloat16 storage: rounded). On overwrite both columns are assigned.
template <class M, class B, class T>
void finish_one_adapter(const M& m, const B& b, const adapter_set<T>& set, index column,
                        mixed_gradients<T>& grads, assign_mode mode) {
  const adapter_options& options = set.column_options(column);
  const T scale = set.column_scale(column);
  const auto lambda_b = set.lambda_b_matrix().col(column);
  const auto lambda_d = set.lambda_d_matrix().col(column);
  auto grad_b = grads.lambda_b.col(column);
  auto grad_d = grads.lambda_d.col(column);
  if (mode == assign_mode::overwrite) {
    grad_b.setZero();
    grad_d.setZero();
  }
  for (index j = 0; j < m.rows(); ++j) {
    const auto weighted = m.row(j).cwiseProduct(b.row(j).template cast<T>());
    if (options.train_b) grad_b(j) += scale * weighted.dot(lambda_d.transpose());
    if (options.train_d) grad_d.noalias() += (scale * lambda_b(j)) * weighted.transpose();
  }
}

/// s Λb B Λd (out x rank) of the adapter in `column`: the folded form a one-adapter batch uses.
template <class T>
Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> folded_b(const adapter_set<T>& set,
                                                                      index column,
                                                                      mixed_workspace<T>& ws) {
  auto out = ws.get(slot_small, set.out_features(), set.rank());
  const auto lambda_b = set.lambda_b_matrix().col(column);
  const auto lambda_d = set.lambda_d_matrix().col(column);
  out.noalias() = (set.column_scale(column) * lambda_b).asDiagonal() * set.b() * lambda_d.asDiagonal();
  return out;
}

}  // namespace vera::detail::cpu::mixed
