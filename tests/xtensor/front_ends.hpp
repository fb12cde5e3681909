// SPDX-License-Identifier: Apache-2.0
// One interface over the Eigen and xtensor front-ends, so that each test is written once for both.
#pragma once

#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

#include <xtensor/xadapt.hpp>
#include <xtensor/xtensor.hpp>

#include <vera/vera.hpp>
#include <vera/xtensor.hpp>

#include "../support/reference.hpp"

namespace vera_test {

/// expr.add_to(y), as a training forward when ctx is given.
template <class Expr, class Y, class T>
void add_forward(const Expr& e, Y& y, vera::forward_context<T>* ctx) {
  if (ctx != nullptr) {
    e.train(*ctx).add_to(y);
  } else {
    e.add_to(y);
  }
}

/// The Eigen front-end on Eigen matrices with storage order `Options` (column-major is Eigen's
/// default; row-major is the layout the xtensor front-end hands to the same evaluators).
template <class T, int Options>
struct eigen_front_of {
  using scalar = T;
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Options>;
  using vector = vera::vector<T>;
  static constexpr const char* name =
      Options == Eigen::RowMajor ? "Eigen front-end, row-major" : "Eigen front-end, column-major";

  static matrix from(const vera_test::matrix<T>& m) { return m; }
  static vector from(const vera::vector<T>& v) { return v; }
  static vera_test::matrix<T> to_eigen(const matrix& m) { return m; }

  template <class Bias>
  static matrix forward(const matrix& x, const matrix& w0, const Bias& bias,
                        const vera::adapter<T>& ad, vera::order o,
                        vera::forward_context<T>* ctx = nullptr) {
    const auto e = vera::forward(x, w0, bias, ad).with_order(o);
    return ctx != nullptr ? matrix(e.train(*ctx)) : matrix(e);
  }
  template <class Bias>
  static void forward_add(matrix& y, const matrix& x, const matrix& w0, const Bias& bias,
                          const vera::adapter<T>& ad, vera::order o,
                          vera::forward_context<T>* ctx = nullptr) {
    add_forward(vera::forward(x, w0, bias, ad).with_order(o), y, ctx);
  }
  static vera::gradients<T> parameter_gradients(const matrix& g, const vera::adapter<T>& ad,
                                                const vera::forward_context<T>& ctx) {
    return vera::parameter_gradients(g, ad, ctx);
  }
  static vera::gradients<T> parameter_gradients_added(const vera::gradients<T>& start,
                                                      const matrix& g, const vera::adapter<T>& ad,
                                                      const vera::forward_context<T>& ctx) {
    vera::gradients<T> sum = start;
    sum += vera::parameter_gradients(g, ad, ctx);
    return sum;
  }
  static matrix input_gradient(const matrix& g, const matrix& w0, const vera::adapter<T>& ad,
                               const vera::forward_context<T>& ctx, vera::order o) {
    return vera::input_gradient(g, w0, ad, ctx).with_order(o);
  }
  static void input_gradient_add(matrix& dx, const matrix& g, const matrix& w0,
                                 const vera::adapter<T>& ad, const vera::forward_context<T>& ctx,
                                 vera::order o) {
    vera::input_gradient(g, w0, ad, ctx).with_order(o).add_to(dx);
  }
  static matrix delta_weight(const vera::adapter<T>& ad) { return vera::delta_weight(ad); }
  static void add_delta(matrix& w, const vera::adapter<T>& ad) { vera::delta_weight(ad).add_to(w); }
  static void subtract_delta(matrix& w, const vera::adapter<T>& ad) {
    vera::delta_weight(ad).subtract_from(w);
  }
  static matrix merged_weight(const matrix& w0, const vera::adapter<T>& ad) {
    return vera::merged_weight(w0, ad);
  }
  static void merge(matrix& w, const vera::adapter<T>& ad) { vera::merge(w, ad); }
  static void unmerge(matrix& w, const vera::adapter<T>& ad) { vera::unmerge(w, ad); }
  static void safe_merge(matrix& w, const vera::adapter<T>& ad) { vera::safe_merge(w, ad); }
};

template <class T>
using eigen_front = eigen_front_of<T, Eigen::ColMajor>;
template <class T>
using eigen_row_front = eigen_front_of<T, Eigen::RowMajor>;

/// The xtensor front-end on xt::xtensor containers.
template <class T>
struct xtensor_front {
  using scalar = T;
  using matrix = vera::xt::matrix<T>;
  using vector = vera::xt::vector<T>;
  static constexpr const char* name = "xtensor front-end";

  static matrix from(const vera_test::matrix<T>& m) {
    matrix out = matrix::from_shape({static_cast<std::size_t>(m.rows()), static_cast<std::size_t>(m.cols())});
    for (index i = 0; i < m.rows(); ++i) {
      for (index j = 0; j < m.cols(); ++j) out(i, j) = m(i, j);
    }
    return out;
  }
  static vector from(const vera::vector<T>& v) {
    vector out = vector::from_shape({static_cast<std::size_t>(v.size())});
    for (index i = 0; i < v.size(); ++i) out(i) = v(i);
    return out;
  }
  static vera_test::matrix<T> to_eigen(const matrix& m) {
    vera_test::matrix<T> out(static_cast<index>(m.shape()[0]), static_cast<index>(m.shape()[1]));
    for (index i = 0; i < out.rows(); ++i) {
      for (index j = 0; j < out.cols(); ++j) out(i, j) = m(i, j);
    }
    return out;
  }

  template <class Bias>
  static matrix forward(const matrix& x, const matrix& w0, const Bias& bias,
                        const vera::adapter<T>& ad, vera::order o,
                        vera::forward_context<T>* ctx = nullptr) {
    const auto e = vera::xt::forward(x, w0, bias, ad).with_order(o);
    return ctx != nullptr ? e.train(*ctx).eval() : e.eval();
  }
  template <class Bias>
  static void forward_add(matrix& y, const matrix& x, const matrix& w0, const Bias& bias,
                          const vera::adapter<T>& ad, vera::order o,
                          vera::forward_context<T>* ctx = nullptr) {
    add_forward(vera::xt::forward(x, w0, bias, ad).with_order(o), y, ctx);
  }
  static vera::gradients<T> parameter_gradients(const matrix& g, const vera::adapter<T>& ad,
                                                const vera::forward_context<T>& ctx) {
    vera::xt::gradients<T> grads;
    grads = vera::xt::parameter_gradients(g, ad, ctx);
    return grads.eigen();
  }
  static vera::gradients<T> parameter_gradients_added(const vera::gradients<T>& start,
                                                      const matrix& g, const vera::adapter<T>& ad,
                                                      const vera::forward_context<T>& ctx) {
    vera::xt::gradients<T> sum(ad);
    sum.eigen() = start;
    sum += vera::xt::parameter_gradients(g, ad, ctx);
    return sum.eigen();
  }
  static matrix input_gradient(const matrix& g, const matrix& w0, const vera::adapter<T>& ad,
                               const vera::forward_context<T>& ctx, vera::order o) {
    return vera::xt::input_gradient(g, w0, ad, ctx).with_order(o);
  }
  static void input_gradient_add(matrix& dx, const matrix& g, const matrix& w0,
                                 const vera::adapter<T>& ad, const vera::forward_context<T>& ctx,
                                 vera::order o) {
    vera::xt::input_gradient(g, w0, ad, ctx).with_order(o).add_to(dx);
  }
  static matrix delta_weight(const vera::adapter<T>& ad) { return vera::xt::delta_weight(ad); }
  static void add_delta(matrix& w, const vera::adapter<T>& ad) {
    vera::xt::delta_weight(ad).add_to(w);
  }
  static void subtract_delta(matrix& w, const vera::adapter<T>& ad) {
    vera::xt::delta_weight(ad).subtract_from(w);
  }
  static matrix merged_weight(const matrix& w0, const vera::adapter<T>& ad) {
    return vera::xt::merged_weight(w0, ad);
  }
  static void merge(matrix& w, const vera::adapter<T>& ad) { vera::xt::merge(w, ad); }
  static void unmerge(matrix& w, const vera::adapter<T>& ad) { vera::xt::unmerge(w, ad); }
  static void safe_merge(matrix& w, const vera::adapter<T>& ad) { vera::xt::safe_merge(w, ad); }
};

/// A test_layer's operands in front-end F's types.
template <class F>
struct front_layer {
  using T = typename F::scalar;
  explicit front_layer(const test_layer<T>& layer)
      : x(F::from(layer.x)), w0(F::from(layer.w0)), bias(F::from(layer.bias)) {}

  typename F::matrix x;
  typename F::matrix w0;
  typename F::vector bias;
};

/// Calls f(bias) or f(vera::no_bias), whatever the front-end's vector type.
template <class Vector, class Fn>
void with_bias_or_not(bool with_bias, const Vector& bias, Fn&& f) {
  if (with_bias) {
    f(bias);
  } else {
    f(vera::no_bias);
  }
}

}  // namespace vera_test
