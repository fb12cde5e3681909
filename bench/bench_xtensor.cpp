// SPDX-License-Identifier: Apache-2.0
// The xtensor front-end against the Eigen front-end on the same shapes and values, same run.
//
// Three callers of the same evaluators: Eigen on column-major matrices (what an Eigen user
// writes), Eigen on row-major matrices (the very GEMM problems the xtensor front-end hands over),
// and xtensor. xtensor / Eigen row-major isolates what the adaptation costs; xtensor / Eigen
// column-major is what a user switching front-ends sees, storage order included.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <type_traits>

#include <xtensor/xtensor.hpp>

#include <vera/xtensor.hpp>

#include "common.hpp"

namespace {

using namespace vera_bench;

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using xmatrix = vera::xt::matrix<float>;
using xvector = vera::xt::vector<float>;

template <class M>
M uninitialised(Eigen::Index rows, Eigen::Index cols) {
  if constexpr (std::is_same_v<M, xmatrix>) {
    return M::from_shape({std::size_t(rows), std::size_t(cols)});
  } else {
    return M(rows, cols);
  }
}

xmatrix to_xtensor(const matrix& m) {
  auto out = uninitialised<xmatrix>(m.rows(), m.cols());
  Eigen::Map<row_matrix>(out.data(), m.rows(), m.cols()) = m;
  return out;
}
xvector to_xtensor(const vector& v) {
  auto out = xvector::from_shape({std::size_t(v.size())});
  Eigen::Map<vector>(out.data(), v.size()) = v;
  return out;
}
Eigen::Map<const row_matrix> as_eigen(const xmatrix& m) {
  return {m.data(), Eigen::Index(m.shape()[0]), Eigen::Index(m.shape()[1])};
}

/// One layer's X, W0, bias and G in one front-end's types (values from layer_operands).
template <class M, class V>
struct front_operands {
  M x, w0, g;
  V bias;
};

template <class M, class V>
front_operands<M, V> convert(const layer_operands& op) {
  if constexpr (std::is_same_v<M, xmatrix>) {
    return {to_xtensor(op.x), to_xtensor(op.w0), to_xtensor(op.g), to_xtensor(op.bias)};
  } else {
    return {op.x, op.w0, op.g, op.bias};
  }
}

/// Operands are converted once per shape and layout, as operands_for builds them once.
template <class M, class V>
const front_operands<M, V>& front_operands_for(const layer_shape& s) {
  static std::map<layer_shape, front_operands<M, V>> cache;
  auto found = cache.find(s);
  if (found == cache.end()) found = cache.emplace(s, convert<M, V>(operands_for(s))).first;
  return found->second;
}

/// The Eigen front-end, as user code calls it.
struct eigen_calls {
  using grads = vera::gradients<float>;
  template <class M, class X, class V>
  static void forward(M& y, const X& x, const M& w0, const V& bias, const vera::adapter<float>& ad,
                      vera::workspace<float>& ws, vera::forward_context<float>* ctx) {
    const auto e = vera::forward(x, w0, bias, ad).using_workspace(ws);
    if (ctx != nullptr) {
      y = e.train(*ctx);
    } else {
      y = e;
    }
  }
  template <class M>
  static void backward(grads& g_out, M& dx, const M& g, const M& w0, const vera::adapter<float>& ad,
                       const vera::forward_context<float>& ctx, vera::workspace<float>& ws) {
    g_out = vera::parameter_gradients(g, ad, ctx).using_workspace(ws);
    dx = vera::input_gradient(g, w0, ad, ctx).using_workspace(ws);
  }
  template <class M>
  static void merge(M& w, const vera::adapter<float>& ad, vera::workspace<float>& ws) {
    vera::merge(w, ad, &ws);
  }
};

/// The xtensor front-end, as user code calls it: into preallocated destinations.
struct xtensor_calls {
  using grads = vera::xt::gradients<float>;
  template <class X>
  static void forward(xmatrix& y, const X& x, const xmatrix& w0, const xvector& bias,
                      const vera::adapter<float>& ad, vera::workspace<float>& ws,
                      vera::forward_context<float>* ctx) {
    const auto e = vera::xt::forward(x, w0, bias, ad).using_workspace(ws);
    if (ctx != nullptr) {
      e.train(*ctx).assign_to(y);
    } else {
      e.assign_to(y);
    }
  }
  static void backward(grads& g_out, xmatrix& dx, const xmatrix& g, const xmatrix& w0,
                       const vera::adapter<float>& ad, const vera::forward_context<float>& ctx,
                       vera::workspace<float>& ws) {
    g_out = vera::xt::parameter_gradients(g, ad, ctx).using_workspace(ws);
    vera::xt::input_gradient(g, w0, ad, ctx).using_workspace(ws).assign_to(dx);
  }
  static void merge(xmatrix& w, const vera::adapter<float>& ad, vera::workspace<float>& ws) {
    vera::xt::merge(w, ad, &ws);
  }
};

// One untimed step sizes workspaces and contexts, so the loop measures the steady state.
template <class Step>
void time_steps(benchmark::State& state, double flops, Step&& step) {
  step();
  const allocation_meter meter;
  for (auto _ : state) {
    step();
    benchmark::ClobberMemory();
  }
  meter.report(state);
  report_flops(state, flops);
}

template <class Calls, class M, class V>
void forward_bench(benchmark::State& state, const layer_shape& s, bool training) {
  const layer_operands& op = operands_for(s);
  const auto& in = front_operands_for<M, V>(s);
  vera::workspace<float> ws;
  vera::forward_context<float> ctx;
  M y = uninitialised<M>(s.rows, s.out);
  time_steps(state, forward_flops(s), [&] {
    Calls::forward(y, in.x, in.w0, in.bias, op.ad, ws, training ? &ctx : nullptr);
    benchmark::DoNotOptimize(y.data());
  });
}

// X handed over as a lazy xtensor expression: the front-end evaluates it once per call into a
// row-major temporary, which is what this variant adds to the plain xtensor forward.
void forward_lazy_input(benchmark::State& state, const layer_shape& s) {
  const layer_operands& op = operands_for(s);
  const auto& in = front_operands_for<xmatrix, xvector>(s);
  vera::workspace<float> ws;
  xmatrix y = uninitialised<xmatrix>(s.rows, s.out);
  time_steps(state, forward_flops(s), [&] {
    xtensor_calls::forward(y, in.x * 1.0f, in.w0, in.bias, op.ad, ws, nullptr);
    benchmark::DoNotOptimize(y.data());
  });
}

template <class Calls, class M, class V>
void backward_bench(benchmark::State& state, const layer_shape& s) {
  const layer_operands& op = operands_for(s);
  const auto& in = front_operands_for<M, V>(s);
  vera::workspace<float> ws;
  vera::forward_context<float> ctx;
  M y = uninitialised<M>(s.rows, s.out);
  Calls::forward(y, in.x, in.w0, in.bias, op.ad, ws, &ctx);
  typename Calls::grads grads;
  M dx = uninitialised<M>(s.rows, s.in);
  time_steps(state, backward_flops(s), [&] {
    Calls::backward(grads, dx, in.g, in.w0, op.ad, ctx, ws);
    benchmark::DoNotOptimize(dx.data());
  });
}

// Repeated merges keep adding ΔW to the same W (as in bench_merge); timing does not depend on
// the values.
template <class Calls, class M>
void merge_bench(benchmark::State& state, const merge_shape& s) {
  const vera::projection<float> shared(vera::projection_spec{/*seed=*/0, s.rank, s.in, s.out});
  const vera::adapter<float> ad(shared, s.in, s.out, random_lambdas());
  const matrix w0 = uniform_matrix(s.out, s.in, 1.0f / std::sqrt(float(s.in)), 2);
  M w = uninitialised<M>(s.out, s.in);
  if constexpr (std::is_same_v<M, xmatrix>) {
    w = to_xtensor(w0);
  } else {
    w = w0;
  }
  vera::workspace<float> ws;
  time_steps(state, merge_flops(s), [&] {
    Calls::merge(w, ad, ws);
    benchmark::DoNotOptimize(w.data());
  });
}

void require_same_bits(const std::string& what, const Eigen::Map<const row_matrix>& actual,
                       const row_matrix& expected) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols() ||
      !(actual.array() == expected.array()).all()) {
    std::fprintf(stderr, "benchmark self-check failed: %s: xtensor and Eigen row-major differ\n",
                 what.c_str());
    std::exit(2);
  }
}

// Before timing: xtensor must reproduce the Eigen front-end on row-major storage bit for bit,
// and the column-major Eigen front-end within float rounding.
void check_agreement(const layer_shape& s) {
  const layer_operands& op = operands_for(s);
  const auto& xt_in = front_operands_for<xmatrix, xvector>(s);
  const auto& row_in = front_operands_for<row_matrix, vector>(s);
  vera::workspace<float> ws;
  vera::forward_context<float> xt_ctx, row_ctx, col_ctx;
  xmatrix y_xt = uninitialised<xmatrix>(s.rows, s.out);
  row_matrix y_row;
  matrix y_col;
  xtensor_calls::forward(y_xt, xt_in.x, xt_in.w0, xt_in.bias, op.ad, ws, &xt_ctx);
  eigen_calls::forward(y_row, row_in.x, row_in.w0, row_in.bias, op.ad, ws, &row_ctx);
  eigen_calls::forward(y_col, op.x, op.w0, op.bias, op.ad, ws, &col_ctx);
  require_same_bits("forward " + s.name(), as_eigen(y_xt), y_row);
  require_close("forward " + s.name() + " (xtensor against column-major)", as_eigen(y_xt), y_col);

  xtensor_calls::grads grads_xt;
  vera::gradients<float> grads_row;
  xmatrix dx_xt = uninitialised<xmatrix>(s.rows, s.in);
  row_matrix dx_row;
  xtensor_calls::backward(grads_xt, dx_xt, xt_in.g, xt_in.w0, op.ad, xt_ctx, ws);
  eigen_calls::backward(grads_row, dx_row, row_in.g, row_in.w0, op.ad, row_ctx, ws);
  require_same_bits("grad_X " + s.name(), as_eigen(dx_xt), dx_row);
  if (!(grads_xt.eigen().lambda_b.array() == grads_row.lambda_b.array()).all() ||
      !(grads_xt.eigen().lambda_d.array() == grads_row.lambda_d.array()).all()) {
    std::fprintf(stderr, "benchmark self-check failed: gradients %s differ\n", s.name().c_str());
    std::exit(2);
  }
}

void register_benchmarks() {
  // Variants of one shape run back to back, so slow drifts of the machine hit them alike.
  for (const layer_shape& s : layer_shapes()) {
    const std::string shape = "/" + s.name();
    for (bool training : {false, true}) {
      const std::string pass = training ? "xt_train/" : "xt_infer/";
      add_benchmark(pass + "eigen_col" + shape, [s, training](benchmark::State& st) {
        forward_bench<eigen_calls, matrix, vector>(st, s, training);
      });
      add_benchmark(pass + "eigen_row" + shape, [s, training](benchmark::State& st) {
        forward_bench<eigen_calls, row_matrix, vector>(st, s, training);
      });
      add_benchmark(pass + "xtensor" + shape, [s, training](benchmark::State& st) {
        forward_bench<xtensor_calls, xmatrix, xvector>(st, s, training);
      });
    }
    add_benchmark("xt_infer/xtensor_lazy_x" + shape,
                  [s](benchmark::State& st) { forward_lazy_input(st, s); });
    add_benchmark("xt_backward/eigen_col" + shape, [s](benchmark::State& st) {
      backward_bench<eigen_calls, matrix, vector>(st, s);
    });
    add_benchmark("xt_backward/eigen_row" + shape, [s](benchmark::State& st) {
      backward_bench<eigen_calls, row_matrix, vector>(st, s);
    });
    add_benchmark("xt_backward/xtensor" + shape, [s](benchmark::State& st) {
      backward_bench<xtensor_calls, xmatrix, xvector>(st, s);
    });
  }
  for (const merge_shape& s : merge_shapes()) {
    const std::string shape = "/" + s.name();
    add_benchmark("xt_merge/eigen_col" + shape,
                  [s](benchmark::State& st) { merge_bench<eigen_calls, matrix>(st, s); });
    add_benchmark("xt_merge/eigen_row" + shape,
                  [s](benchmark::State& st) { merge_bench<eigen_calls, row_matrix>(st, s); });
    add_benchmark("xt_merge/xtensor" + shape,
                  [s](benchmark::State& st) { merge_bench<xtensor_calls, xmatrix>(st, s); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);
  return vera_bench::run_benchmarks(argc, argv, [] {
    for (const auto& s : vera_bench::layer_shapes()) check_agreement(s);
    register_benchmarks();
  });
}
