// SPDX-License-Identifier: Apache-2.0
// Backward pass of an adapted layer: vera against the textbook Eigen formulas and the GEMM floor.
#include <string>

#include "common.hpp"

namespace {

using namespace vera_bench;

std::string cost_model_label(const layer_shape& s) {
  return vera_bench::model_label(
      vera::detail::input_gradient_costs(s.extents(), /*workspace_reused=*/true));
}

/// A training forward already run: the context holds P, as it does when backward starts.
struct trained_layer {
  const layer_operands& op;
  vera::workspace<float> ws;
  vera::forward_context<float> ctx;
  vera::gradients<float> grads;
  matrix dx;

  explicit trained_layer(const layer_shape& s)
      : op(operands_for(s)), grads(op.ad), dx(s.rows, s.in) {
    matrix y = vera::forward(op.x, op.w0, op.bias, op.ad).train(ctx).using_workspace(ws);
  }
  void parameter_gradients() {
    grads = vera::parameter_gradients(op.g, op.ad, ctx).using_workspace(ws);
  }
  void input_gradient(vera::order o) {
    dx = vera::input_gradient(op.g, op.w0, op.ad, ctx).using_workspace(ws).with_order(o);
  }
};

/// The textbook backward of VERA.md §3 in Eigen, into preallocated buffers. With `keep_q` the
/// forward's Q = (P ⊙ d) Bᵀ is assumed stored (n x out more memory); otherwise it is recomputed.
struct plain_backward {
  const layer_operands& op;
  bool keep_q;
  matrix p, q, t, dx;
  vector grad_b, grad_d;

  plain_backward(const layer_shape& s, bool keep)
      : op(operands_for(s)),
        keep_q(keep),
        p(s.rows, s.rank),
        q(s.rows, s.out),
        t(s.rows, s.rank),
        dx(s.rows, s.in),
        grad_b(s.out),
        grad_d(s.rank) {
    p.noalias() = op.x * op.ad.a().transpose();
    if (keep_q) recompute_q();
  }
  void recompute_q() { q.noalias() = (p * op.ad.lambda_d().asDiagonal()) * op.ad.b().transpose(); }
  void parameter_gradients() {
    if (!keep_q) recompute_q();
    grad_b = op.g.cwiseProduct(q).colwise().sum().transpose();
    t.noalias() = (op.g * op.ad.lambda_b().asDiagonal()) * op.ad.b();
    grad_d = t.cwiseProduct(p).colwise().sum().transpose();
  }
  // Reuses T from parameter_gradients, as a textbook backward does.
  void input_gradient() {
    dx.noalias() = op.g * op.w0;
    dx += (t * op.ad.lambda_d().asDiagonal()) * op.ad.a();
  }
};

template <class F>
void time_loop(benchmark::State& state, double flops, F&& step, const float* result) {
  step();  // sizes every reused buffer, so the loop measures the steady state
  const allocation_meter meter;
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(result);
    benchmark::ClobberMemory();
  }
  meter.report(state);
  report_flops(state, flops);
}

// Full backward: grad_b, grad_d and grad_X -----------------------------------------------------

void vera_backward(benchmark::State& state, const layer_shape& s) {
  trained_layer layer(s);
  time_loop(
      state, backward_flops(s),
      [&] {
        layer.parameter_gradients();
        layer.input_gradient(vera::order::automatic);
      },
      layer.dx.data());
  state.SetLabel(cost_model_label(s));
}

void plain_full(benchmark::State& state, const layer_shape& s, bool keep_q) {
  plain_backward run(s, keep_q);
  time_loop(
      state, backward_flops(s),
      [&] {
        run.parameter_gradients();
        run.input_gradient();
      },
      run.dx.data());
}

// grad_b and grad_d only (a first layer needs no grad_X) --------------------------------------

void vera_params(benchmark::State& state, const layer_shape& s) {
  trained_layer layer(s);
  time_loop(
      state, parameter_gradient_flops(s), [&] { layer.parameter_gradients(); },
      layer.grads.lambda_b.data());
}

void plain_params(benchmark::State& state, const layer_shape& s) {
  plain_backward run(s, /*keep=*/false);
  time_loop(
      state, parameter_gradient_flops(s), [&] { run.parameter_gradients(); }, run.grad_b.data());
}

// The floor with only P saved: one n x out x r GEMM (Gᵀ P) carries everything both gradients need.
void floor_params(benchmark::State& state, const layer_shape& s) {
  const layer_operands& op = operands_for(s);
  const matrix p = op.x * op.ad.a().transpose();
  matrix m(s.out, s.rank);
  time_loop(
      state, parameter_gradient_flops(s), [&] { m.noalias() = op.g.transpose() * p; }, m.data());
}

// grad_X with a forced association order -------------------------------------------------------

void vera_input_gradient(benchmark::State& state, const layer_shape& s, vera::order o) {
  trained_layer layer(s);
  time_loop(
      state, input_gradient_flops(s), [&] { layer.input_gradient(o); }, layer.dx.data());
  state.SetLabel(cost_model_label(s));
}

// The floors of the two orders of grad_X. The low-rank one (G W0, T = G B, T A) is also the floor
// of the whole backward in VERA.md's count, where grad_b comes free from a Q kept by the forward.
void floor_input_gradient(benchmark::State& state, const layer_shape& s, vera::order o) {
  const layer_operands& op = operands_for(s);
  const auto a = op.ad.a();
  const auto b = op.ad.b();
  matrix t(s.rows, s.rank), dx(s.rows, s.in), w(s.out, s.in);
  if (o == vera::order::merged) {
    time_loop(
        state, input_gradient_flops(s),
        [&] {
          w = op.w0;
          w.noalias() += b * a;
          dx.noalias() = op.g * w;
        },
        dx.data());
  } else {
    time_loop(
        state, input_gradient_flops(s),
        [&] {
          dx.noalias() = op.g * op.w0;
          t.noalias() = op.g * b;
          dx.noalias() += t * a;
        },
        dx.data());
  }
}

// Every vera path must reproduce the textbook formulas before any of them is timed.
void check_agreement(const layer_shape& s) {
  const std::string where = "backward " + s.name();
  trained_layer layer(s);
  for (bool keep_q : {false, true}) {
    plain_backward expected(s, keep_q);
    expected.parameter_gradients();
    expected.input_gradient();
    require_close(where + " saved P", layer.ctx.projected(), expected.p);
    layer.parameter_gradients();
    require_close(where + " grad_b", layer.grads.lambda_b, expected.grad_b);
    require_close(where + " grad_d", layer.grads.lambda_d, expected.grad_d);
    for (vera::order o : {vera::order::automatic, vera::order::low_rank, vera::order::merged}) {
      layer.input_gradient(o);
      require_close(where + " grad_X order " + order_name(o), layer.dx, expected.dx);
    }
  }
}

void register_benchmarks() {
  // Variants of one shape run back to back, so slow drifts of the machine hit them alike.
  for (const layer_shape& s : layer_shapes()) {
    const std::string shape = "/" + s.name();
    add_benchmark("backward/vera" + shape, [s](benchmark::State& st) { vera_backward(st, s); });
    add_benchmark("backward/plain_q_recomputed" + shape,
                  [s](benchmark::State& st) { plain_full(st, s, false); });
    add_benchmark("backward/plain_q_kept" + shape,
                  [s](benchmark::State& st) { plain_full(st, s, true); });
    add_benchmark("backward/floor" + shape, [s](benchmark::State& st) {
      floor_input_gradient(st, s, vera::order::low_rank);
    });
    add_benchmark("param_grads/vera" + shape, [s](benchmark::State& st) { vera_params(st, s); });
    add_benchmark("param_grads/plain" + shape, [s](benchmark::State& st) { plain_params(st, s); });
    add_benchmark("param_grads/floor" + shape, [s](benchmark::State& st) { floor_params(st, s); });
    for (vera::order o : {vera::order::low_rank, vera::order::merged}) {
      add_benchmark("input_grad_order/" + std::string(order_name(o)) + shape,
                    [s, o](benchmark::State& st) { vera_input_gradient(st, s, o); });
      add_benchmark("input_grad_order/floor_" + std::string(order_name(o)) + shape,
                    [s, o](benchmark::State& st) { floor_input_gradient(st, s, o); });
    }
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
