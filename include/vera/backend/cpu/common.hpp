// SPDX-License-Identifier: Apache-2.0
// Building blocks shared by the CPU evaluators: folded scales, weight layout, dropout tiles.
#pragma once

#include <algorithm>
#include <optional>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/adapter/workspace.hpp"
#include "vera/backend/cpu/gemm.hpp"
#include "vera/backend/cpu/plan.hpp"
#include "vera/core/exec.hpp"
#include "vera/core/dropout.hpp"
#include "vera/expr/operand.hpp"

namespace vera::detail::cpu {

/// Rows per tile when dropout forces the adapter input through a masked copy.
inline constexpr index dropout_tile_rows = 128;

/// Workspace slots; each evaluator uses each slot for one purpose at a time.
enum slot : int { slot_weight = 0, slot_scaled_b = 1, slot_thin = 2, slot_tile = 3 };

/// Uses the caller's workspace, or a local one for a single call (`Workspace`: workspace<T>, or
/// the mixed evaluators' mixed_workspace<T>).
template <class T, class Workspace = workspace<T>>
class scratch {
 public:
  explicit scratch(Workspace* provided) : ws_(provided != nullptr ? provided : &local_.emplace()) {}
  Workspace& get() noexcept { return *ws_; }
  bool reused() const noexcept { return !local_.has_value(); }

 private:
  std::optional<Workspace> local_;
  Workspace* ws_;
};

/// Λb B Λd (out x rank): both scales folded into one small matrix, so no n-sized pass is spent
/// on them and the low-rank GEMMs read the scales for free. Built row by row in B's own
/// row-major layout: a column-major build strides through B by the full rank and, at ranks
/// that are multiples of 1024 floats, keeps hitting one cache set.
template <class T>
Eigen::Map<row_matrix<T>> scaled_b(const adapter<T>& ad, workspace<T>& ws) {
  auto buffer = ws.get(slot_scaled_b, ad.out_features(), ad.rank());
  Eigen::Map<row_matrix<T>> out(buffer.data(), ad.out_features(), ad.rank());
  const auto b = ad.b();
  const auto lambda_b = ad.lambda_b();
  const auto lambda_d = ad.lambda_d();
  for (index j = 0; j < out.rows(); ++j) {
    out.row(j) = lambda_b(j) * b.row(j).cwiseProduct(lambda_d.transpose());
  }
  return out;
}

/// B with one of its two scales, in the same slot and layout as scaled_b: B Λd (`lambda_d`
/// true) or Λb B. For evaluators that keep the other scale apart, e.g. to keep Q = (P Λd) B^T.
template <class T>
Eigen::Map<row_matrix<T>> half_scaled_b(const adapter<T>& ad, bool lambda_d, workspace<T>& ws) {
  auto buffer = ws.get(slot_scaled_b, ad.out_features(), ad.rank());
  Eigen::Map<row_matrix<T>> out(buffer.data(), ad.out_features(), ad.rank());
  if (lambda_d) {
    out = ad.b() * ad.lambda_d().asDiagonal();
  } else {
    out = ad.lambda_b().asDiagonal() * ad.b();
  }
  return out;
}

/// merged = W0 + (Λb B Λd) A, the merged order's weight (out x in), built in a workspace slot.
/// `w` is W0 seen as out x in, `folded` is Λb B Λd (out x rank).
template <class W, class Folded, class A, class Merged>
void fold_into_weight(const W& w, const Folded& folded, const A& a, Merged& merged) {
  merged = w;
  gemm(merged, folded, a, true);
}

/// q = (P Λd) B^T (rows x out): the low-rank output term before Λb, with Λd applied to the thin
/// rows x rank side. For small batches, where building B Λd would cost more than scaling P.
/// Uses the scaled-B slot; `q` must not live in it. `q` may be a view, e.g. the transpose of an
/// out x rows buffer when the caller works on Y^T.
template <class P, class T, class Q>
void thin_q(const P& p, const adapter<T>& ad, workspace<T>& ws, Q&& q) {
  auto pd = ws.get(slot_scaled_b, p.rows(), ad.rank());
  pd = p * ad.lambda_d().asDiagonal();
  gemm(q, pd, ad.b().transpose(), false);
}

/// u = (G Λb) B (rows x rank): the low-rank input-gradient term before Λd, with Λb applied to
/// the thin rows x out side. Uses the scaled-B slot; `u` must not live in it.
template <class G, class T, class U>
void thin_t(const G& g, const adapter<T>& ad, workspace<T>& ws, U& u) {
  auto gb = ws.get(slot_scaled_b, g.rows(), ad.out_features());
  gb = g * ad.lambda_b().asDiagonal();
  gemm(u, gb, ad.b(), false);
}

/// Y = bias broadcast over the rows (or zero), or Y += bias when accumulating.
template <class Y, class Bias>
void initialise_output(Y& y, const Bias& bias, assign_mode mode) {
  if constexpr (std::is_same_v<Bias, no_bias_t>) {
    if (mode == assign_mode::overwrite) y.setZero();
  } else {
    // A bias may be stored as a column or a row vector; broadcasting needs it as a row.
    const auto broadcast = [&](const auto& row) {
      if (mode == assign_mode::overwrite) {
        y.rowwise() = row;
      } else {
        y.rowwise() += row;
      }
    };
    if constexpr (std::decay_t<Bias>::ColsAtCompileTime == 1) {
      broadcast(bias.transpose());
    } else {
      broadcast(bias);
    }
  }
}

/// grad_b[j] += Σk B[j,k] d[k] M[j,k] and grad_d[k] += Σj b[j] B[j,k] M[j,k], the out x rank pass
/// that finishes the parameter gradients from M = Gᵀ P (row-major, so each row of M pairs with a
/// contiguous row of B). `b` is B as the layer computes with it (bfloat16 layers: rounded).
template <class M, class B, class T>
void finish_parameter_gradients(const M& m, const B& b, const adapter<T>& ad, gradients<T>& out) {
  const bool train_b = ad.options().train_b;
  const bool train_d = ad.options().train_d;
  const auto lambda_b = ad.lambda_b();
  const auto lambda_d = ad.lambda_d();
  for (index j = 0; j < ad.out_features(); ++j) {
    const auto weighted = m.row(j).cwiseProduct(b.row(j).template cast<T>());
    if (train_b) out.lambda_b(j) += weighted.dot(lambda_d.transpose());
    if (train_d) out.lambda_d.noalias() += lambda_b(j) * weighted.transpose();
  }
}

/// Calls f with the base weight seen as out x in, whatever its storage layout.
template <class T, class W, class F>
decltype(auto) with_weight(const adapter<T>& ad, const W& w0, F&& f) {
  if (ad.options().fan_in_fan_out) return f(w0.transpose());
  return f(w0);
}

/// tile = drop(source) for rows [first_row, first_row + tile.rows()) of the adapter input.
template <class Src, class Tile>
void masked_rows(const Src& source, index first_row, const dropout_key& key, Tile& tile) {
  using T = typename Tile::Scalar;
  const T keep_scale = static_cast<T>(1.0 / (1.0 - key.probability));
  for (index i = 0; i < tile.rows(); ++i) {
    for (index j = 0; j < tile.cols(); ++j) {
      tile(i, j) = dropout_keeps(key, first_row + i, j) ? source(first_row + i, j) * keep_scale : T(0);
    }
  }
}

/// Applies the same mask (and scale) to rows of a gradient tile in place.
template <class Tile>
void mask_tile(index first_row, const dropout_key& key, Tile& tile) {
  using T = typename Tile::Scalar;
  const T keep_scale = static_cast<T>(1.0 / (1.0 - key.probability));
  for (index i = 0; i < tile.rows(); ++i) {
    for (index j = 0; j < tile.cols(); ++j) {
      tile(i, j) = dropout_keeps(key, first_row + i, j) ? tile(i, j) * keep_scale : T(0);
    }
  }
}

/// dst += mask(src a), 128 rows at a time so the masked product never exists as a whole: each
/// tile comes from `tile_of(rows, cols)` and `mask(first, tile)` applies the dropout of its rows.
template <class Src, class A, class Dst, class TileOf, class Mask>
void add_masked_product(const Src& src, const A& a, Dst& dst, TileOf&& tile_of, Mask&& mask) {
  for (index first = 0; first < src.rows(); first += dropout_tile_rows) {
    const index rows = std::min(dropout_tile_rows, src.rows() - first);
    auto tile = tile_of(rows, a.cols());
    gemm(tile, src.middleRows(first, rows), a, false);
    mask(first, tile);
    dst.middleRows(first, rows) += tile;
  }
}

/// dX += mask ⊙ (t A) / (1 - p): the adapter input's share of grad_X, with the forward's dropout
/// mask.
template <class Thin, class A, class Dx, class T>
void add_back_projection(const Thin& t, const A& a, const dropout_key& key, Dx& dx, workspace<T>& ws) {
  if (key.probability == 0.0) {
    gemm(dx, t, a, true);
    return;
  }
  add_masked_product(
      t, a, dx, [&](index rows, index cols) { return ws.get(slot_tile, rows, cols); },
      [&](index first, auto& tile) { mask_tile(first, key, tile); });
}

}  // namespace vera::detail::cpu
