// SPDX-License-Identifier: Apache-2.0
// Oracle for mixed batches: the core's single-adapter calls, looped over each adapter's rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <Eigen/Core>

#include <vera/multi.hpp>

namespace multi_test {

using vera::index;

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

template <class T>
matrix<T> random_matrix(index rows, index cols, std::uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> uniform(-scale, scale);
  matrix<T> m(rows, cols);
  for (index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(uniform(rng));
  return m;
}

/// Shapes small enough to check every element, odd so that no extent lines up with SIMD width.
struct shape {
  index rows = 67;
  index in = 23;
  index out = 19;
  index rank = 11;
};

/// A projection a little larger than the layer, so the layer really uses slices.
template <class T>
vera::projection<T> make_projection(const shape& s, std::uint64_t seed = 5) {
  return vera::projection<T>({seed, s.rank + 3, s.in + 4, s.out + 2, vera::generator::philox});
}

/// Non-trivial vectors: b = 1 and d ~ N(0, 1) perturbed, so that every adapter differs.
inline vera::adapter_options random_options(std::uint64_t seed) {
  vera::adapter_options options;
  options.init = vera::init_kind::random;
  options.init_seed = seed;
  return options;
}

template <class T>
void perturb_b(vera::adapter_set<T>& set, vera::adapter_id id, std::uint32_t seed) {
  set.lambda_b(id) += random_matrix<T>(set.out_features(), 1, seed, 0.5);
}

/// Max |a - b| over max(1, max |b|): a relative error that tolerates values near zero.
template <class A, class B>
double relative_gap(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  if (a.size() == 0 && b.size() == 0) return 0.0;
  const double scale = std::max(1.0, static_cast<double>(b.cwiseAbs().maxCoeff()));
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

/// Per element of the adapter input: 0 or 1 / (1 - p) under row i's adapter's dropout mask in
/// the mixed context's step, 1 where there is no dropout (`key` null, base rows, p = 0).
template <class T>
matrix<T> dropout_mask(const vera::adapter_set<T>& set, const std::vector<int>& ids, index rows,
                       index cols, const vera::dropout_key* key) {
  matrix<T> mask = matrix<T>::Ones(rows, cols);
  if (key == nullptr) return mask;
  for (index i = 0; i < rows; ++i) {
    const int id = ids[static_cast<std::size_t>(i)];
    if (id < 0 || !set.contains(id) || !set.enabled(id)) continue;
    vera::dropout_key row_key = *key;
    row_key.probability = set.options(id).dropout;
    if (row_key.probability == 0.0) continue;
    for (index j = 0; j < cols; ++j) {
      mask(i, j) = vera::dropout_keeps(row_key, i, j) ? static_cast<T>(1.0 / (1.0 - row_key.probability)) : T(0);
    }
  }
  return mask;
}

/// Adapter `id` of the set as a standalone core adapter with dropout off (masks are applied by
/// the caller) and the scale folded into lambda_b.
template <class T>
vera::adapter<T> plain_adapter(const vera::adapter_set<T>& set, vera::adapter_id id) {
  vera::adapter_options options = set.options(id);
  options.dropout = 0.0;
  vera::adapter<T> single(set.shared_projection(), set.in_features(), set.out_features(), options);
  single.set_lambdas(set.scale(id) * set.lambda_b(id), set.lambda_d(id));
  return single;
}

/// What the mixed calls should produce, computed adapter by adapter with the core.
template <class T>
struct loop_result {
  matrix<T> y;       // n x out
  matrix<T> grad_b;  // out x k
  matrix<T> grad_d;  // rank x k
  matrix<T> dx;      // n x in
};

/// Loops the core's forward / parameter_gradients / input_gradient over the rows of each adapter.
/// `key` is the mixed context's dropout key (null: no dropout); `g` may be empty (forward only).
template <class T>
loop_result<T> loop_reference(const vera::adapter_set<T>& set, const matrix<T>& x, const matrix<T>& w0,
                              const vec<T>* bias, const std::vector<int>& ids, const matrix<T>& g,
                              const vera::dropout_key* key = nullptr) {
  const index n = x.rows();
  const bool fan = set.fan_in_fan_out();
  const matrix<T> w = fan ? matrix<T>(w0.transpose()) : w0;  // out x in
  const matrix<T> zero_w0 = matrix<T>::Zero(w0.rows(), w0.cols());
  const matrix<T> mask = dropout_mask(set, ids, x.rows(), x.cols(), key);
  const matrix<T> masked = x.cwiseProduct(mask);
  const bool backward = g.size() > 0;

  loop_result<T> r;
  r.y = x * w.transpose();
  if (bias != nullptr) r.y.rowwise() += bias->transpose();
  r.grad_b = matrix<T>::Zero(set.out_features(), set.columns());
  r.grad_d = matrix<T>::Zero(set.rank(), set.columns());
  if (backward) r.dx = g * w;

  for (vera::adapter_id id : set.ids()) {
    if (!set.enabled(id)) continue;
    std::vector<index> rows;
    for (index i = 0; i < n; ++i) {
      if (ids[static_cast<std::size_t>(i)] == id) rows.push_back(i);
    }
    if (rows.empty()) continue;
    const auto count = static_cast<index>(rows.size());
    matrix<T> xa(count, x.cols()), ga(count, backward ? g.cols() : 0);
    for (index t = 0; t < count; ++t) {
      xa.row(t) = masked.row(rows[static_cast<std::size_t>(t)]);
      if (backward) ga.row(t) = g.row(rows[static_cast<std::size_t>(t)]);
    }
    const vera::adapter<T> ad = plain_adapter(set, id);
    vera::forward_context<T> ctx;
    // The adapter term alone, from the (masked) adapter input; the base term is added above.
    const matrix<T> term = vera::forward(xa, zero_w0, vera::no_bias, ad).train(ctx);
    for (index t = 0; t < count; ++t) r.y.row(rows[static_cast<std::size_t>(t)]) += term.row(t);
    if (!backward) continue;
    const vera::gradients<T> grads = vera::parameter_gradients(ga, ad, ctx);
    const index column = set.column(id);
    // d/db of (s b) is s times the core's gradient of its lambda_b = s b.
    r.grad_b.col(column) = set.scale(id) * grads.lambda_b;
    r.grad_d.col(column) = grads.lambda_d;
    matrix<T> dxa = vera::input_gradient(ga, zero_w0, ad, ctx);
    // The adapter term of dX passes back through row i's dropout mask.
    for (index t = 0; t < count; ++t) {
      const index i = rows[static_cast<std::size_t>(t)];
      r.dx.row(i) += dxa.row(t).cwiseProduct(mask.row(i));
    }
  }
  return r;
}

/// The same computation through the core's own single-adapter forward with W0 and bias, for
/// batches without dropout: rows of each adapter go through vera::forward as a whole.
template <class T>
matrix<T> loop_forward(const vera::adapter_set<T>& set, const matrix<T>& x, const matrix<T>& w0,
                       const vec<T>& bias, const std::vector<int>& ids) {
  const bool fan = set.fan_in_fan_out();
  matrix<T> y = fan ? matrix<T>(x * w0) : matrix<T>(x * w0.transpose());
  y.rowwise() += bias.transpose();
  for (vera::adapter_id id : set.ids()) {
    if (!set.enabled(id)) continue;
    std::vector<index> rows;
    for (index i = 0; i < x.rows(); ++i) {
      if (ids[static_cast<std::size_t>(i)] == id) rows.push_back(i);
    }
    if (rows.empty()) continue;
    matrix<T> xa(static_cast<index>(rows.size()), x.cols());
    for (std::size_t t = 0; t < rows.size(); ++t) xa.row(static_cast<index>(t)) = x.row(rows[t]);
    const vera::adapter<T> ad = set.to_adapter(id);
    const matrix<T> ya = vera::forward(xa, w0, bias, ad);
    for (std::size_t t = 0; t < rows.size(); ++t) y.row(rows[t]) = ya.row(static_cast<index>(t));
  }
  return y;
}

/// Random ids in [-1, k): about one row in (k + 1) runs the base model.
inline std::vector<int> random_ids(index rows, const std::vector<vera::adapter_id>& adapters,
                                   std::uint32_t seed, bool with_base_rows = true) {
  std::mt19937 rng(seed);
  const auto choices = static_cast<std::uint32_t>(adapters.size() + (with_base_rows ? 1 : 0));
  std::vector<int> ids(static_cast<std::size_t>(rows));
  for (int& id : ids) {
    const std::uint32_t pick = rng() % choices;
    id = pick < adapters.size() ? adapters[pick] : vera::no_adapter;
  }
  return ids;
}

/// How a batch's rows are spread over adapters in the mixed tests.
enum class layout { random, grouped, one_adapter, one_adapter_and_base, base_only };

inline const layout all_layouts[] = {layout::random, layout::grouped, layout::one_adapter,
                                     layout::one_adapter_and_base, layout::base_only};

inline const char* name(layout l) {
  switch (l) {
    case layout::random: return "random rows";
    case layout::grouped: return "rows grouped by adapter";
    case layout::one_adapter: return "every row on one adapter";
    case layout::one_adapter_and_base: return "one adapter and base rows";
    case layout::base_only: return "base rows only";
  }
  return "";
}

}  // namespace multi_test
