// SPDX-License-Identifier: Apache-2.0
// Forward pass of an adapted layer: vera against plain Eigen and the bare GEMM floor, same run.
#include <string>

#include "common.hpp"

namespace {

using namespace vera_bench;

/// The cost model's view of this shape, with a reused workspace as in the benchmarks.
std::string cost_model_label(const layer_shape& s, bool training) {
  return vera_bench::model_label(
      vera::detail::forward_costs(s.extents(), training, /*workspace_reused=*/true));
}

void finish(benchmark::State& state, const allocation_meter& meter, const layer_shape& s) {
  meter.report(state);
  report_flops(state, forward_flops(s));
}

// vera, inference: one expression per call, as user code writes it; the workspace is reused.
void vera_inference(benchmark::State& state, const layer_shape& s, vera::order requested) {
  const layer_operands& op = operands_for(s);
  vera::workspace<float> ws;
  matrix y(s.rows, s.out);
  // One untimed call sizes the workspace, so the loop measures the steady state.
  y = vera::forward(op.x, op.w0, op.bias, op.ad).using_workspace(ws).with_order(requested);
  const allocation_meter meter;
  for (auto _ : state) {
    y = vera::forward(op.x, op.w0, op.bias, op.ad).using_workspace(ws).with_order(requested);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  finish(state, meter, s);
  state.SetLabel(cost_model_label(s, false));  // after the counters: building the label allocates
}

// vera, training: P is kept in the reused context for backward.
void vera_training(benchmark::State& state, const layer_shape& s, vera::order requested) {
  const layer_operands& op = operands_for(s);
  vera::workspace<float> ws;
  vera::forward_context<float> ctx;
  matrix y(s.rows, s.out);
  y = vera::forward(op.x, op.w0, op.bias, op.ad)
          .train(ctx)
          .using_workspace(ws)
          .with_order(requested);
  const allocation_meter meter;
  for (auto _ : state) {
    y = vera::forward(op.x, op.w0, op.bias, op.ad)
            .train(ctx)
            .using_workspace(ws)
            .with_order(requested);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  finish(state, meter, s);
  state.SetLabel(cost_model_label(s, true));  // after the counters: building the label allocates
}

// The same math as a user writes it in Eigen: preallocated Y and P (kept, as training needs),
// scales applied as diagonal products in formula order.
struct plain_forward {
  const layer_operands& op;
  matrix y;
  matrix p;

  explicit plain_forward(const layer_shape& s)
      : op(operands_for(s)), y(s.rows, s.out), p(s.rows, s.rank) {}

  void operator()() {
    const auto a = op.ad.a();
    const auto b = op.ad.b();
    const auto lambda_b = op.ad.lambda_b();
    const auto lambda_d = op.ad.lambda_d();
    y.noalias() = op.x * op.w0.transpose();
    p.noalias() = op.x * a.transpose();
    y += ((p * lambda_d.asDiagonal()) * b.transpose()) * lambda_b.asDiagonal();
    y.rowwise() += op.bias.transpose();
  }
};

void plain(benchmark::State& state, const layer_shape& s) {
  plain_forward run(s);
  run();
  const allocation_meter meter;
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(run.y.data());
    benchmark::ClobberMemory();
  }
  finish(state, meter, s);
}

// The floor: only the three GEMMs the low-rank forward cannot avoid, no scales, no bias.
void gemm_floor(benchmark::State& state, const layer_shape& s) {
  const layer_operands& op = operands_for(s);
  const auto a = op.ad.a();
  const auto b = op.ad.b();
  matrix y(s.rows, s.out);
  matrix p(s.rows, s.rank);
  const allocation_meter meter;
  for (auto _ : state) {
    y.noalias() = op.x * op.w0.transpose();
    p.noalias() = op.x * a.transpose();
    y.noalias() += p * b.transpose();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  finish(state, meter, s);
}

// The floor of the merged order: W = W0 + B A built in a reused buffer (a copy and one
// out x r x in GEMM), then the single n x in x out GEMM. Beats the low-rank floor at large n.
void gemm_floor_merged(benchmark::State& state, const layer_shape& s) {
  const layer_operands& op = operands_for(s);
  const auto a = op.ad.a();
  const auto b = op.ad.b();
  matrix y(s.rows, s.out);
  matrix w(s.out, s.in);
  const allocation_meter meter;
  for (auto _ : state) {
    w = op.w0;
    w.noalias() += b * a;
    y.noalias() = op.x * w.transpose();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  finish(state, meter, s);
}

// Every vera path must reproduce plain Eigen before any of them is timed.
void check_agreement(const layer_shape& s) {
  const layer_operands& op = operands_for(s);
  plain_forward expected(s);
  expected();
  vera::workspace<float> ws;
  for (vera::order o : {vera::order::automatic, vera::order::low_rank, vera::order::merged}) {
    const std::string where = "forward " + s.name() + " order " + order_name(o);
    matrix y = vera::forward(op.x, op.w0, op.bias, op.ad).using_workspace(ws).with_order(o);
    require_close(where + " inference", y, expected.y);
    vera::forward_context<float> ctx;
    y = vera::forward(op.x, op.w0, op.bias, op.ad).train(ctx).using_workspace(ws).with_order(o);
    require_close(where + " training", y, expected.y);
    require_close(where + " saved P", ctx.projected(), expected.p);
  }
}

void register_benchmarks() {
  // Variants of one shape run back to back, so slow drifts of the machine hit them alike.
  for (const layer_shape& s : layer_shapes()) {
    const std::string shape = "/" + s.name();
    add_benchmark("forward/vera_infer" + shape,
                  [s](benchmark::State& st) { vera_inference(st, s, vera::order::automatic); });
    add_benchmark("forward/vera_train" + shape,
                  [s](benchmark::State& st) { vera_training(st, s, vera::order::automatic); });
    add_benchmark("forward/plain" + shape, [s](benchmark::State& st) { plain(st, s); });
    add_benchmark("forward/floor" + shape, [s](benchmark::State& st) { gemm_floor(st, s); });
    add_benchmark("forward/floor_merged" + shape,
                  [s](benchmark::State& st) { gemm_floor_merged(st, s); });
    for (vera::order o : {vera::order::low_rank, vera::order::merged}) {
      const std::string forced = order_name(o) + shape;
      add_benchmark("forward_order/infer_" + forced,
                    [s, o](benchmark::State& st) { vera_inference(st, s, o); });
      add_benchmark("forward_order/train_" + forced,
                    [s, o](benchmark::State& st) { vera_training(st, s, o); });
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
