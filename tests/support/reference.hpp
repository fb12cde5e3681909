// SPDX-License-Identifier: Apache-2.0
// Naive VeRA reference written straight from the formulas: the oracle for every fast path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include <vera/vera.hpp>

#include "gemm_threads_scope.hpp"

namespace vera_test {

using vera::index;

// The reference runs in long double so that its own rounding is negligible next to the
// tolerances below, which are budgets for the library's rounding alone.
using wide = long double;
using wide_matrix = Eigen::Matrix<wide, Eigen::Dynamic, Eigen::Dynamic>;
using wide_vector = Eigen::Matrix<wide, Eigen::Dynamic, 1>;

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

/// Everything the VeRA formulas read, in PyTorch layout (W0 is out x in whatever the storage).
struct layer_values {
  wide_matrix x;         // n x in
  wide_matrix w0;        // out x in
  wide_vector bias;      // out, or empty for no bias
  wide_matrix a;         // rank x in
  wide_matrix b;         // out x rank
  wide_vector lambda_b;  // out
  wide_vector lambda_d;  // rank
  wide_matrix mask;      // n x in: 0 or 1 / (1 - p); all ones without dropout
};

/// Reads the values of an adapted layer. `w0_stored` is in the adapter's storage layout;
/// `key` is the dropout mask of a training forward (nullptr or p = 0: no dropout).
template <class T, class XD>
layer_values capture(const Eigen::MatrixBase<XD>& x, const matrix<T>& w0_stored,
                     const vera::vector<std::common_type_t<T>>* bias,  // T not deduced here
                     const vera::adapter<T>& ad, const vera::dropout_key* key = nullptr) {
  layer_values v;
  v.x = x.template cast<wide>();
  v.w0 = ad.options().fan_in_fan_out ? wide_matrix(w0_stored.transpose().template cast<wide>())
                                     : wide_matrix(w0_stored.template cast<wide>());
  if (bias != nullptr) v.bias = bias->template cast<wide>();
  v.a = ad.a().template cast<wide>();
  v.b = ad.b().template cast<wide>();
  v.lambda_b = ad.lambda_b().template cast<wide>();
  v.lambda_d = ad.lambda_d().template cast<wide>();
  v.mask = wide_matrix::Ones(x.rows(), x.cols());
  if (key != nullptr && key->probability > 0.0) {
    const wide keep_scale = wide(1) / (wide(1) - static_cast<wide>(key->probability));
    for (index i = 0; i < x.rows(); ++i) {
      for (index j = 0; j < x.cols(); ++j) {
        v.mask(i, j) = vera::dropout_keeps(*key, i, j) ? keep_scale : wide(0);
      }
    }
  }
  return v;
}

/// The same layer with every value replaced by its absolute value. Running the reference on it
/// gives, for each output element, the sum of |terms| that the classic error bound scales with.
inline layer_values magnitudes(const layer_values& v) {
  layer_values m;
  m.x = v.x.cwiseAbs();
  m.w0 = v.w0.cwiseAbs();
  m.bias = v.bias.cwiseAbs();
  m.a = v.a.cwiseAbs();
  m.b = v.b.cwiseAbs();
  m.lambda_b = v.lambda_b.cwiseAbs();
  m.lambda_d = v.lambda_d.cwiseAbs();
  m.mask = v.mask.cwiseAbs();
  return m;
}

struct forward_values {
  wide_matrix p;  // drop(X) A^T, n x rank
  wide_matrix q;  // (P ⊙ d) B^T, n x out
  wide_matrix y;  // X W0^T + bias + Q ⊙ b, n x out
};

/// P = drop(X) Aᵀ;  Q = (P ⊙ d) Bᵀ;  Y = X W0ᵀ + bias + Q ⊙ b.
inline forward_values reference_forward(const layer_values& v) {
  const index n = v.x.rows();
  const index in = v.x.cols();
  const index out = v.w0.rows();
  const index rank = v.a.rows();
  forward_values f;
  f.p = wide_matrix::Zero(n, rank);
  for (index i = 0; i < n; ++i) {
    for (index k = 0; k < rank; ++k) {
      for (index l = 0; l < in; ++l) f.p(i, k) += v.x(i, l) * v.mask(i, l) * v.a(k, l);
    }
  }
  f.q = wide_matrix::Zero(n, out);
  for (index i = 0; i < n; ++i) {
    for (index j = 0; j < out; ++j) {
      for (index k = 0; k < rank; ++k) f.q(i, j) += f.p(i, k) * v.lambda_d(k) * v.b(j, k);
    }
  }
  f.y = wide_matrix::Zero(n, out);
  for (index i = 0; i < n; ++i) {
    for (index j = 0; j < out; ++j) {
      wide sum = v.bias.size() == 0 ? wide(0) : v.bias(j);
      for (index l = 0; l < in; ++l) sum += v.x(i, l) * v.w0(j, l);
      f.y(i, j) = sum + f.q(i, j) * v.lambda_b(j);
    }
  }
  return f;
}

struct backward_values {
  wide_vector grad_b;  // out
  wide_vector grad_d;  // rank
  wide_matrix grad_x;  // n x in
};

/// grad_b = colsum(G ⊙ Q);  T = (G ⊙ b) B;  grad_d = colsum(T ⊙ P);
/// grad_X = G W0 + ((T ⊙ d) A) ⊙ mask.
inline backward_values reference_backward(const layer_values& v, const wide_matrix& g) {
  const index n = v.x.rows();
  const index in = v.x.cols();
  const index out = v.w0.rows();
  const index rank = v.a.rows();
  const forward_values f = reference_forward(v);
  backward_values r;
  r.grad_b = wide_vector::Zero(out);
  for (index j = 0; j < out; ++j) {
    for (index i = 0; i < n; ++i) r.grad_b(j) += g(i, j) * f.q(i, j);
  }
  wide_matrix t = wide_matrix::Zero(n, rank);
  for (index i = 0; i < n; ++i) {
    for (index k = 0; k < rank; ++k) {
      for (index j = 0; j < out; ++j) t(i, k) += g(i, j) * v.lambda_b(j) * v.b(j, k);
    }
  }
  r.grad_d = wide_vector::Zero(rank);
  for (index k = 0; k < rank; ++k) {
    for (index i = 0; i < n; ++i) r.grad_d(k) += t(i, k) * f.p(i, k);
  }
  r.grad_x = wide_matrix::Zero(n, in);
  for (index i = 0; i < n; ++i) {
    for (index l = 0; l < in; ++l) {
      wide base = 0;
      for (index j = 0; j < out; ++j) base += g(i, j) * v.w0(j, l);
      wide adapter_term = 0;
      for (index k = 0; k < rank; ++k) adapter_term += t(i, k) * v.lambda_d(k) * v.a(k, l);
      r.grad_x(i, l) = base + adapter_term * v.mask(i, l);
    }
  }
  return r;
}

/// ΔW = Λb B Λd A, out x in.
inline wide_matrix reference_delta(const layer_values& v) {
  const index in = v.a.cols();
  const index out = v.b.rows();
  const index rank = v.a.rows();
  wide_matrix delta = wide_matrix::Zero(out, in);
  for (index j = 0; j < out; ++j) {
    for (index l = 0; l < in; ++l) {
      for (index k = 0; k < rank; ++k) {
        delta(j, l) += v.lambda_b(j) * v.b(j, k) * v.lambda_d(k) * v.a(k, l);
      }
    }
  }
  return delta;
}

/// Error budget per unit of magnitude (the sum of |terms| behind each output element, see
/// magnitudes()) for a result built from chains of at most `depth` roundings.
///
/// The worst-case bound |fl(sum) - sum| <= depth * u * sum|terms| is only reached when every
/// rounding errs the same way; in practice rounding errors behave like independent random signs
/// and grow as sqrt(depth) (Higham, Accuracy and Stability of Numerical Algorithms, 3.6). The
/// budget 8 eps sqrt(depth) (float: ~1e-6 * sqrt(depth), double: ~2e-15 * sqrt(depth)) sits at
/// least 5x above the largest error any evaluation order shows on these tests' inputs (about
/// 1.5 eps), while a wrong formula, a missing scale or a wrongly masked element errs by a sizeable
/// fraction of the magnitude: thousands of times the budget.
template <class T>
wide tolerance_factor(index depth) {
  return 8 * static_cast<wide>(std::numeric_limits<T>::epsilon()) *
         std::sqrt(static_cast<wide>(depth));
}

/// bfloat16's unit roundoff: 8 significant bits, so one rounding to nearest changes a value by at
/// most 2^-8 of itself.
inline constexpr wide bfloat16_roundoff = wide(1) / 256;

/// Budget for an output of the bfloat16 path that went through `roundings` bfloat16 roundings of
/// intermediates (each bounded by the unit roundoff times the magnitude of the terms it carries)
/// plus float32 accumulation over `depth` terms. Worst case, not statistical: a bfloat16 rounding

/// bfloat16 operands of the tests: the scalar, column- and row-major matrices, vectors.
using half = Eigen::bfloat16;
using half_matrix = Eigen::Matrix<half, Eigen::Dynamic, Eigen::Dynamic>;
using half_rows = Eigen::Matrix<half, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using half_vector = Eigen::Matrix<half, Eigen::Dynamic, 1>;

/// is 2^15 times a float's, so a wrong formula or a missing scale still errs far beyond it.
inline wide bfloat16_budget(int roundings, index depth) {
  return roundings * bfloat16_roundoff + tolerance_factor<float>(depth);
}

/// Longest rounding chain any VeRA output of these extents goes through (sums over n for the
/// parameter gradients, over in, out and rank for the products), with slack for bias and scales.
inline index rounding_depth(index rows, index in, index out, index rank) {
  return rows + in + out + rank + 4;
}

/// Worst element of a comparison against the reference, as a fraction of its error budget.
struct comparison {
  double worst = 0.0;  // largest |actual - expected| / budget; <= 1 passes
  index row = -1;
  index col = -1;
  wide actual = 0;
  wide expected = 0;
  wide budget = 0;
  bool shape_ok = true;

  bool ok() const { return shape_ok && worst <= 1.0; }
};

inline std::ostream& operator<<(std::ostream& os, const comparison& c) {
  if (!c.shape_ok) return os << "shapes differ";
  os << "worst element (" << c.row << ", " << c.col << "): actual " << static_cast<double>(c.actual)
     << ", expected " << static_cast<double>(c.expected) << ", budget "
     << static_cast<double>(c.budget) << " (" << c.worst << " of it)";
  return os;
}

/// Compares element by element: |actual - expected| <= factor * magnitude.
template <class D>
comparison compare(const Eigen::MatrixBase<D>& actual, const wide_matrix& expected,
                   const wide_matrix& magnitude, wide factor) {
  comparison c;
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
    c.shape_ok = false;
    return c;
  }
  for (index j = 0; j < expected.cols(); ++j) {
    for (index i = 0; i < expected.rows(); ++i) {
      const wide a = static_cast<wide>(actual(i, j));
      const wide diff = std::fabs(a - expected(i, j));
      const wide budget = factor * magnitude(i, j);
      double ratio = 0.0;
      if (!(diff <= budget)) {
        ratio = budget > 0 && std::isfinite(static_cast<double>(diff))
                    ? static_cast<double>(diff / budget)
                    : std::numeric_limits<double>::infinity();
      } else if (budget > 0) {
        ratio = static_cast<double>(diff / budget);
      }
      if (ratio > c.worst || c.row < 0) {
        c.worst = std::max(c.worst, ratio);
        c.row = i;
        c.col = j;
        c.actual = a;
        c.expected = expected(i, j);
        c.budget = budget;
      }
    }
  }
  return c;
}

/// Deterministic values uniform in [-1, 1) with a fixed, platform-independent recipe
/// (std::uniform_real_distribution's algorithm is implementation-defined).
template <class T>
matrix<T> random_matrix(index rows, index cols, std::uint32_t seed) {
  std::mt19937 engine(seed);
  matrix<T> m(rows, cols);
  for (index j = 0; j < cols; ++j) {
    for (index i = 0; i < rows; ++i) {
      const auto word = static_cast<std::uint32_t>(engine());
      m(i, j) = static_cast<T>(static_cast<double>(word >> 8) / 8388608.0 - 1.0);
    }
  }
  return m;
}

template <class T>
vera::vector<T> random_vector(index size, std::uint32_t seed) {
  return random_matrix<T>(size, 1, seed);
}

/// True when both have the same shape and every element has the same bit pattern.
template <class A, class B>
bool same_bits(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  static_assert(std::is_same_v<typename A::Scalar, typename B::Scalar>, "same scalar type needed");
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (index j = 0; j < a.cols(); ++j) {
    for (index i = 0; i < a.rows(); ++i) {
      const auto x = a.derived()(i, j);
      const auto y = b.derived()(i, j);
      if (std::memcmp(&x, &y, sizeof(x)) != 0) return false;
    }
  }
  return true;
}

/// Extents of one adapted layer under test. The projection is made a little larger in every
/// direction than the layer needs, so that every test also exercises the slicing.
struct layer_shape {
  index rows;
  index in;
  index out;
  index rank;
};

/// Extents that catch edge cases: n in {0, 1, 7, 8, 9, 67, 127, 300} (300 spans three 128-row
/// dropout tiles), in/out in {1, 7, 8, 9, 67} (SIMD width +- 1 and an odd prime), and ranks
/// both below and above in.
inline std::vector<layer_shape> edge_shapes() {
  return {{0, 7, 9, 8},   {1, 1, 1, 4},      {1, 67, 8, 16}, {7, 8, 7, 8},
          {8, 9, 67, 12}, {9, 7, 8, 16},     {67, 67, 9, 4}, {127, 8, 67, 70},
          {300, 9, 7, 8}, {300, 67, 67, 16}, {8, 1, 67, 3},  {67, 9, 1, 10}};
}

/// Calls f(bias) or f(vera::no_bias): the two are different expression types.
template <class T, class F>
void with_optional_bias(bool with_bias, const vera::vector<T>& bias, F&& f) {
  if (with_bias) {
    f(bias);
  } else {
    f(vera::no_bias);
  }
}

/// A layer with random W0 (in the storage layout the options ask for), bias, input and
/// non-trivial lambdas, over a projection sliced by in, out and rank.
template <class T>
struct test_layer {
  test_layer(const layer_shape& shape, const vera::adapter_options& options, std::uint32_t seed,
             vera::generator kind = vera::generator::peft)
      : projection(vera::projection_spec{seed, shape.rank + 2, shape.in + 3, shape.out + 2, kind}),
        ad(projection, shape.in, shape.out, with_rank(options, shape.rank)),
        x(random_matrix<T>(shape.rows, shape.in, seed + 1)),
        w0(options.fan_in_fan_out ? random_matrix<T>(shape.in, shape.out, seed + 2)
                                  : random_matrix<T>(shape.out, shape.in, seed + 2)),
        bias(random_vector<T>(shape.out, seed + 3)) {
    ad.set_lambdas(random_vector<T>(shape.out, seed + 4), random_vector<T>(shape.rank, seed + 5));
  }

  static vera::adapter_options with_rank(vera::adapter_options options, index rank) {
    options.rank = rank;
    return options;
  }

  vera::projection<T> projection;
  vera::adapter<T> ad;
  matrix<T> x;
  matrix<T> w0;
  vera::vector<T> bias;
};

}  // namespace vera_test
