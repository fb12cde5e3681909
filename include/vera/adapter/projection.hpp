// SPDX-License-Identifier: Apache-2.0
// The shared frozen pair A, B: generated once from a spec, immutable, cheap to copy and share.
#pragma once

#include <memory>
#include <mutex>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "vera/core/dense.hpp"
#include "vera/core/error.hpp"
#include "vera/core/projection_spec.hpp"
#include "vera/core/shape.hpp"

namespace vera {

/// \brief Shared random projection A (rank x max_in) and B (max_out x rank), row-major.
///
/// Copies share one immutable buffer (a shared_ptr), so every adapted layer of a model and every
/// adapter of an adapter set can hold the same projection. Values are generated in float32, as
/// PEFT does, and widened exactly when T is double.
template <class T>
class projection {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "vera::projection<T>: T must be float or double");

 public:
  using scalar = T;  ///< Element type, float or double.
  /// Read-only view of a layer's A (rank x in).
  using a_block = Eigen::Block<const row_matrix<T>>;
  /// Read-only view of a layer's B (out x rank).
  using b_block = Eigen::Block<const row_matrix<T>>;

  /// \brief Generates A (rank x max_in) and B (max_out x rank) from `spec`.
  /// \throws value_error for non-positive extents (see validate(const projection_spec&)).
  explicit projection(const projection_spec& spec) {
    validate(spec);
    std::vector<float> a(static_cast<std::size_t>(spec.rank * spec.max_in));
    std::vector<float> b(static_cast<std::size_t>(spec.max_out * spec.rank));
    generate_projection(spec, a.data(), b.data());
    auto built = std::make_shared<state>();
    built->spec = spec;
    built->a = Eigen::Map<const row_matrix<float>>(a.data(), spec.rank, spec.max_in).template cast<T>();
    built->b = Eigen::Map<const row_matrix<float>>(b.data(), spec.max_out, spec.rank).template cast<T>();
    state_ = std::move(built);
  }

  /// \brief Wraps matrices that came from elsewhere (e.g. saved with an adapter).
  ///
  /// `spec` records where they came from; its rank and extents must match the matrices' shapes
  /// (A: rank x max_in, B: max_out x rank). The values are taken as given.
  /// \throws value_error for a bad spec; shape_error when A or B has another shape.
  projection(const projection_spec& spec, row_matrix<T> a, row_matrix<T> b) {
    validate(spec);
    vera::detail::check_shape("projection A", spec.rank, spec.max_in, a.rows(), a.cols());
    vera::detail::check_shape("projection B", spec.max_out, spec.rank, b.rows(), b.cols());
    auto built = std::make_shared<state>();
    built->spec = spec;
    built->a = std::move(a);
    built->b = std::move(b);
    state_ = std::move(built);
  }

  /// \brief The spec the matrices were generated from (or recorded with).
  const projection_spec& spec() const noexcept { return state_->spec; }
  /// \brief Rank of the projection: rows of A, columns of B.
  index rank() const noexcept { return state_->spec.rank; }
  /// \brief Columns of A: the largest in_features an adapter may have.
  index max_in() const noexcept { return state_->spec.max_in; }
  /// \brief Rows of B: the largest out_features an adapter may have.
  index max_out() const noexcept { return state_->spec.max_out; }

  /// \brief The full A, rank x max_in.
  const row_matrix<T>& a() const noexcept { return state_->a; }
  /// \brief The full B, max_out x rank.
  const row_matrix<T>& b() const noexcept { return state_->b; }

  /// \brief A[:rank, :in] for a layer with `in` input features and rank `rank` (<= this rank).
  /// \throws value_error for in or rank <= 0; shape_error for in > max_in(); rank_error for
  ///         rank > rank().
  a_block a(index in, index rank) const {
    check_slice(in, max_in(), "in_features", rank);
    return state_->a.topLeftCorner(rank, in);
  }
  /// \brief B[:out, :rank] for a layer with `out` output features and rank `rank`.
  /// \throws value_error for out or rank <= 0; shape_error for out > max_out(); rank_error for
  ///         rank > rank().
  b_block b(index out, index rank) const {
    check_slice(out, max_out(), "out_features", rank);
    return state_->b.topLeftCorner(out, rank);
  }

  /// \brief A[:rank, :in] rounded to bfloat16 (nearest even), as PEFT holds it for a bfloat16
  ///        model; made once per projection on first use (thread-safe) and shared by its copies.
  Eigen::Block<const row_matrix<Eigen::bfloat16>> a_bfloat16(index in, index rank) const {
    check_slice(in, max_in(), "in_features", rank);
    return rounded().a.topLeftCorner(rank, in);
  }
  /// \brief B[:out, :rank] rounded to bfloat16, as a_bfloat16.
  Eigen::Block<const row_matrix<Eigen::bfloat16>> b_bfloat16(index out, index rank) const {
    check_slice(out, max_out(), "out_features", rank);
    return rounded().b.topLeftCorner(out, rank);
  }

  /// \brief True when both handles share one buffer (cheap identity test).
  bool shares_storage_with(const projection& other) const noexcept {
    return state_ == other.state_;
  }

 private:
  struct rounded_pair {
    row_matrix<Eigen::bfloat16> a;
    row_matrix<Eigen::bfloat16> b;
  };
  struct state {
    projection_spec spec;
    row_matrix<T> a;
    row_matrix<T> b;
    // bfloat16 copies for bfloat16 layers, made on first use only.
    mutable std::once_flag rounded_once;
    mutable rounded_pair rounded;
  };

  const rounded_pair& rounded() const {
    std::call_once(state_->rounded_once, [s = state_.get()] {
      s->rounded.a = s->a.template cast<Eigen::bfloat16>();
      s->rounded.b = s->b.template cast<Eigen::bfloat16>();
    });
    return state_->rounded;
  }

  void check_slice(index extent, index available, const char* name, index rank) const {
    vera::detail::check_positive(name, extent);
    vera::detail::check_fits(name, extent, available);
    vera::detail::check_positive("rank", rank);
    if (rank > this->rank()) {
      throw rank_error("rank: layer needs " + std::to_string(rank) +
                       " but the projection provides " + std::to_string(this->rank()));
    }
  }

  std::shared_ptr<const state> state_;
};

}  // namespace vera
