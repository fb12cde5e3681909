// SPDX-License-Identifier: Apache-2.0
// Merging an adapter into W0 (and forming ΔW): vera against plain Eigen and the one-GEMM floor.
#include <stdexcept>
#include <string>

#include "common.hpp"

namespace {

using namespace vera_bench;

struct merge_operands {
  merge_shape shape;
  vera::projection<float> shared;
  vera::adapter<float> ad;
  matrix w0;

  explicit merge_operands(const merge_shape& s)
      : shape(s),
        shared(vera::projection_spec{/*seed=*/0, s.rank, s.in, s.out}),
        ad(shared, s.in, s.out, random_lambdas()),
        w0(uniform_matrix(s.out, s.in, 1.0f / std::sqrt(float(s.in)), 2)) {}
};

// ΔW as a user writes it from the formula Λb B Λd A.
void plain_add_delta(const vera::adapter<float>& ad, matrix& w) {
  w += ad.lambda_b().asDiagonal() * ad.b() * ad.lambda_d().asDiagonal() * ad.a();
}

// Repeated merges keep adding ΔW to the same W; the values drift but stay far from overflow
// over any iteration count the benchmark reaches, and timing does not depend on them.
template <class F>
void time_loop(benchmark::State& state, const merge_shape& s, F&& step, const float* result) {
  step();
  const allocation_meter meter;
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(result);
    benchmark::ClobberMemory();
  }
  meter.report(state);
  report_flops(state, merge_flops(s));
}

void vera_merge(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  time_loop(
      state, s, [&] { vera::merge(op.w0, op.ad); }, op.w0.data());
}
void vera_merge_workspace(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  vera::workspace<float> ws;
  time_loop(
      state, s, [&] { vera::merge(op.w0, op.ad, &ws); }, op.w0.data());
}
void plain_merge(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  time_loop(
      state, s, [&] { plain_add_delta(op.ad, op.w0); }, op.w0.data());
}
void floor_merge(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  const auto a = op.ad.a();
  const auto b = op.ad.b();
  time_loop(
      state, s, [&] { op.w0.noalias() += b * a; }, op.w0.data());
}

void vera_safe_merge(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  vera::workspace<float> ws;
  time_loop(
      state, s, [&] { vera::safe_merge(op.w0, op.ad, &ws); }, op.w0.data());
}
// PEFT's safe_merge in Eigen: build the candidate, check it, then commit.
void plain_safe_merge(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  matrix candidate(s.out, s.in);
  time_loop(
      state, s,
      [&] {
        candidate = op.w0;
        plain_add_delta(op.ad, candidate);
        if (!candidate.allFinite()) throw std::runtime_error("merged weight is not finite");
        op.w0 = candidate;
      },
      op.w0.data());
}

void vera_delta(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  matrix dw(s.out, s.in);
  time_loop(
      state, s, [&] { dw = vera::delta_weight(op.ad); }, dw.data());
}
void plain_delta(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  matrix dw(s.out, s.in);
  time_loop(
      state, s,
      [&] {
        dw = op.ad.lambda_b().asDiagonal() * op.ad.b() * op.ad.lambda_d().asDiagonal() * op.ad.a();
      },
      dw.data());
}
void floor_delta(benchmark::State& state, const merge_shape& s) {
  merge_operands op(s);
  const auto a = op.ad.a();
  const auto b = op.ad.b();
  matrix dw(s.out, s.in);
  time_loop(
      state, s, [&] { dw.noalias() = b * a; }, dw.data());
}

// Every vera path must reproduce plain Eigen before any of them is timed.
void check_agreement(const merge_shape& s) {
  const std::string where = "merge " + s.name();
  const merge_operands op(s);
  matrix expected = op.w0;
  plain_add_delta(op.ad, expected);
  matrix w = op.w0;
  vera::merge(w, op.ad);
  require_close(where + " merge", w, expected);
  w = op.w0;
  vera::safe_merge(w, op.ad);
  require_close(where + " safe_merge", w, expected);
  const matrix merged = vera::merged_weight(op.w0, op.ad);
  require_close(where + " merged_weight", merged, expected);
  const matrix dw = vera::delta_weight(op.ad);
  matrix expected_delta = matrix::Zero(s.out, s.in);
  plain_add_delta(op.ad, expected_delta);
  require_close(where + " delta_weight", dw, expected_delta);
}

// The machine's GEMM rate with the GEMM this build uses (Eigen's, or BLAS under VERA_USE_BLAS):
// a square product large enough to run at the kernel's peak, the yardstick for merge's rate.
void gemm_peak(benchmark::State& state, Eigen::Index size) {
  const matrix a = uniform_matrix(size, size, 1.0f, 3);
  const matrix b = uniform_matrix(size, size, 1.0f, 4);
  matrix c(size, size);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * double(size) * double(size) * double(size));
}

template <class F>
void add(const std::string& name, const merge_shape& s, F&& f) {
  auto* b = add_benchmark(name, std::forward<F>(f));
  // A 4096 x 4096 merge takes about a tenth of a second: a fixed, small iteration count keeps the
  // suite short while still averaging more than one call.
  if (s.out * s.in >= 4096 * 4096) b->Iterations(4);
}

void register_benchmarks() {
  add_benchmark("gemm_peak/2048", [](benchmark::State& st) { gemm_peak(st, 2048); });
  for (const merge_shape& s : merge_shapes()) {
    const std::string shape = "/" + s.name();
    add("merge/vera" + shape, s, [s](benchmark::State& st) { vera_merge(st, s); });
    add("merge/vera_workspace" + shape, s, [s](benchmark::State& st) { vera_merge_workspace(st, s); });
    add("merge/plain" + shape, s, [s](benchmark::State& st) { plain_merge(st, s); });
    add("merge/floor" + shape, s, [s](benchmark::State& st) { floor_merge(st, s); });
    add("safe_merge/vera" + shape, s, [s](benchmark::State& st) { vera_safe_merge(st, s); });
    add("safe_merge/plain" + shape, s, [s](benchmark::State& st) { plain_safe_merge(st, s); });
    add("safe_merge/floor" + shape, s, [s](benchmark::State& st) { floor_merge(st, s); });
    add("delta_weight/vera" + shape, s, [s](benchmark::State& st) { vera_delta(st, s); });
    add("delta_weight/plain" + shape, s, [s](benchmark::State& st) { plain_delta(st, s); });
    add("delta_weight/floor" + shape, s, [s](benchmark::State& st) { floor_delta(st, s); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);
  return vera_bench::run_benchmarks(argc, argv, [] {
    for (const auto& s : vera_bench::merge_shapes()) check_agreement(s);
    register_benchmarks();
  });
}
