// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the benchmarks: machine context, layer shapes, FLOP counts, operands, checks.
//
// Include from exactly one translation unit per benchmark executable: it defines the program's
// allocation counter (see below), which must exist once.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <vera/vera.hpp>

// Counting heap allocations shows whether a steady-state call really allocates nothing. Eigen
// allocates through std::malloc, not operator new, so malloc itself is counted; glibc exports
// its allocator as __libc_malloc for exactly this kind of wrapper. Sanitizers replace malloc
// themselves, so the counter is left out under them (and everywhere but glibc).
#define VERA_BENCH_SANITIZED 0
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#undef VERA_BENCH_SANITIZED
#define VERA_BENCH_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#undef VERA_BENCH_SANITIZED
#define VERA_BENCH_SANITIZED 1
#endif
#if defined(__GLIBC__) && !VERA_BENCH_SANITIZED
#define VERA_BENCH_COUNTS_ALLOCATIONS 1
#else
#define VERA_BENCH_COUNTS_ALLOCATIONS 0
#endif

namespace vera_bench {
inline std::atomic<long long> allocation_count{0};
inline std::atomic<long long> allocation_bytes{0};
}  // namespace vera_bench

#if VERA_BENCH_COUNTS_ALLOCATIONS
extern "C" void* __libc_malloc(std::size_t size) noexcept;
extern "C" void* malloc(std::size_t size) noexcept {
  vera_bench::allocation_count.fetch_add(1, std::memory_order_relaxed);
  vera_bench::allocation_bytes.fetch_add(static_cast<long long>(size), std::memory_order_relaxed);
  return __libc_malloc(size);
}
#endif

namespace vera_bench {

using index = Eigen::Index;
using matrix = Eigen::MatrixXf;
using vector = Eigen::VectorXf;

// ---------------------------------------------------------------------------------------------
// Shapes and FLOP counts

/// One adapted layer applied to `rows` tokens.
struct layer_shape {
  index rows;
  index in;
  index out;
  index rank;

  std::string name() const {
    return std::to_string(in) + "x" + std::to_string(out) + "/r" + std::to_string(rank) + "/n" +
           std::to_string(rows);
  }
  vera::detail::product_extents extents() const { return {rows, in, out, rank}; }
  bool operator<(const layer_shape& o) const {
    return std::tie(rows, in, out, rank) < std::tie(o.rows, o.in, o.out, o.rank);
  }
};

/// RoBERTa-base attention-sized projections at VeRA's usual ranks, plus one small layer
/// where call overhead and elementwise passes are not hidden behind GEMM time.
inline std::vector<layer_shape> layer_shapes() {
  std::vector<layer_shape> shapes{{64, 128, 128, 64}};
  for (index rank : {256, 1024}) {
    for (index rows : {32, 512, 2048}) shapes.push_back({rows, 768, 768, rank});
  }
  return shapes;
}

/// Shapes of the merge benchmarks: out x in weight, rank.
struct merge_shape {
  index out;
  index in;
  index rank;
  std::string name() const {
    return std::to_string(out) + "x" + std::to_string(in) + "/r" + std::to_string(rank);
  }
};

inline std::vector<merge_shape> merge_shapes() {
  return {{768, 768, 256}, {768, 768, 1024}, {4096, 4096, 256}};
}

// FLOP counts of the low-rank formulation (VERA.md §3), multiply-add = 2. Every variant of an
// operation is charged the same count, so the rates compare time on equal work.
inline double forward_flops(const layer_shape& s) {
  const double n = double(s.rows), in = double(s.in), out = double(s.out), r = double(s.rank);
  return 2 * n * in * out + 2 * n * r * (in + out);
}
inline double backward_flops(const layer_shape& s) {
  const double n = double(s.rows), in = double(s.in), out = double(s.out), r = double(s.rank);
  return 2 * n * in * out + 2 * n * r * out + 2 * n * r * in;
}
/// grad_b and grad_d alone: the T = (G Λb) B product.
inline double parameter_gradient_flops(const layer_shape& s) {
  return 2 * double(s.rows) * double(s.rank) * double(s.out);
}
/// grad_X alone: G W0 plus (T Λd) A and the T product it needs.
inline double input_gradient_flops(const layer_shape& s) { return backward_flops(s); }
inline double merge_flops(const merge_shape& s) {
  return 2 * double(s.out) * double(s.rank) * double(s.in);
}

// ---------------------------------------------------------------------------------------------
// Operands

inline matrix uniform_matrix(index rows, index cols, float bound, unsigned seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> dist(-bound, bound);
  matrix m(rows, cols);
  for (index i = 0; i < m.size(); ++i) m.data()[i] = dist(engine);
  return m;
}

/// Adapter options with b = 1 and d ~ N(0, 1): the default b = 0 would make the adapter term
/// zero, and a check of vera against plain Eigen would then compare only the base GEMM.
inline vera::adapter_options random_lambdas() {
  vera::adapter_options options;
  options.init = vera::init_kind::random;
  options.init_seed = 5;
  return options;
}

/// Everything one layer benchmark reads: X, W0, bias, G and an adapter on its own projection.
struct layer_operands {
  layer_shape shape;
  vera::projection<float> shared;
  vera::adapter<float> ad;
  matrix x;
  matrix w0;
  vector bias;
  matrix g;

  explicit layer_operands(const layer_shape& s)
      : shape(s),
        shared(vera::projection_spec{/*seed=*/0, s.rank, s.in, s.out}),
        ad(shared, s.in, s.out, random_lambdas()),
        x(uniform_matrix(s.rows, s.in, 1.0f, 1)),
        w0(uniform_matrix(s.out, s.in, 1.0f / std::sqrt(float(s.in)), 2)),
        bias(uniform_matrix(s.out, 1, 0.1f, 3)),
        g(uniform_matrix(s.rows, s.out, 1.0f / float(s.rows), 4)) {}
};

/// Operands are built once per shape: the benchmark library calls each function several times
/// while it sizes the iteration count, and regenerating them would dominate small shapes.
inline const layer_operands& operands_for(const layer_shape& s) {
  static std::map<layer_shape, layer_operands> cache;
  auto found = cache.find(s);
  if (found == cache.end()) found = cache.emplace(s, layer_operands(s)).first;
  return found->second;
}

// ---------------------------------------------------------------------------------------------
// Counters

/// Counts heap allocations over the timed loop; read it after the loop.
class allocation_meter {
 public:
  allocation_meter()
      : count_(allocation_count.load(std::memory_order_relaxed)),
        bytes_(allocation_bytes.load(std::memory_order_relaxed)) {}
  void report(benchmark::State& state) const {
#if VERA_BENCH_COUNTS_ALLOCATIONS
    // Both totals are read before the counters map is touched: inserting into it allocates.
    const long long count = allocation_count.load(std::memory_order_relaxed) - count_;
    const long long bytes = allocation_bytes.load(std::memory_order_relaxed) - bytes_;
    const double iterations = double(std::max<benchmark::IterationCount>(state.iterations(), 1));
    state.counters["allocs"] = double(count) / iterations;
    state.counters["alloc_MiB"] = double(bytes) / iterations / (1 << 20);
#else
    (void)state;
#endif
  }

 private:
  long long count_;
  long long bytes_;
};

/// FLOP rate on the operation's nominal count; shown with an SI prefix, "12.3G/s" = 12.3 GFLOP/s.
inline void report_flops(benchmark::State& state, double flops_per_iteration) {
  state.counters["FLOPS"] = benchmark::Counter(flops_per_iteration * double(state.iterations()),
                                               benchmark::Counter::kIsRate);
}

inline const char* order_name(vera::order o) {
  switch (o) {
    case vera::order::low_rank:
      return "low_rank";
    case vera::order::merged:
      return "merged";
    default:
      return "automatic";
  }
}

/// "model picks merged (low_rank 4.0e+08, merged 3.0e+08)": the cost model's choice for a
/// benchmark's shape and the two estimates behind it, so its output can be checked against the
/// measured times of both forced orders.
inline std::string model_label(const vera::detail::order_costs& costs) {
  const vera::order pick = vera::detail::choose_order(vera::order::automatic, costs, /*merged_valid=*/true);
  char text[96];
  std::snprintf(text, sizeof text, "model picks %s (low_rank %.1e, merged %.1e)", order_name(pick),
                costs.low_rank, costs.merged);
  return text;
}

/// Registers a benchmark reported in microseconds. Times and rates use the benchmark thread's
/// CPU time (the library's default), which stays meaningful when other processes share the cores.
template <class F>
benchmark::internal::Benchmark* add_benchmark(const std::string& name, F&& f) {
  return benchmark::RegisterBenchmark(name.c_str(), std::forward<F>(f))
      ->Unit(benchmark::kMicrosecond);
}

// ---------------------------------------------------------------------------------------------
// Agreement checks: the comparison is only honest if every variant computes the same numbers.

/// Largest elementwise difference relative to the largest reference magnitude.
template <class A, class B>
double relative_difference(const Eigen::MatrixBase<A>& actual,
                           const Eigen::MatrixBase<B>& expected) {
  const double scale = std::max(double(expected.cwiseAbs().maxCoeff()), 1e-30);
  return double((actual - expected).cwiseAbs().maxCoeff()) / scale;
}

/// Aborts the benchmark program when `actual` and `expected` disagree beyond float rounding.
template <class A, class B>
void require_close(const std::string& what, const Eigen::MatrixBase<A>& actual,
                   const Eigen::MatrixBase<B>& expected, double tolerance = 1e-4) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
    std::fprintf(stderr, "benchmark self-check failed: %s: shape %ldx%ld, expected %ldx%ld\n",
                 what.c_str(), long(actual.rows()), long(actual.cols()), long(expected.rows()),
                 long(expected.cols()));
    std::exit(2);
  }
  const double difference = relative_difference(actual, expected);
  if (!(difference <= tolerance)) {
    std::fprintf(stderr,
                 "benchmark self-check failed: %s differs from the plain Eigen result "
                 "(max |diff| / max |expected| = %.3g > %.1g); timings would not be comparable\n",
                 what.c_str(), difference, tolerance);
    std::exit(2);
  }
}

// ---------------------------------------------------------------------------------------------
// Machine context and main

inline std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

/// Records what the numbers depend on next to them, in the console header and in JSON output.
inline void add_machine_context() {
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
  benchmark::AddCustomContext("vera_version", vera::version_string);
#if defined(__VERSION__)
  benchmark::AddCustomContext("compiler", __VERSION__);
#endif
#if defined(NDEBUG)
  benchmark::AddCustomContext("assertions", "off (NDEBUG)");
#else
  benchmark::AddCustomContext("assertions", "on: Eigen asserts slow every kernel");
#endif
  benchmark::AddCustomContext("allocation_counter", VERA_BENCH_COUNTS_ALLOCATIONS ? "on" : "off");
}

/// Parses the flags, runs `setup` (self-checks and registration), then the benchmarks. Without an
/// explicit --benchmark_min_time each benchmark runs for 0.1 s, which keeps the whole suite to a
/// few minutes; the flag still overrides it.
template <class Setup>
int run_benchmarks(int argc, char** argv, Setup&& setup) {
  std::vector<char*> args(argv, argv + argc);
  static char default_min_time[] = "--benchmark_min_time=0.1";
  const bool has_min_time = std::any_of(args.begin(), args.end(), [](const char* a) {
    return std::strncmp(a, "--benchmark_min_time", 20) == 0;
  });
  if (!has_min_time) args.insert(args.begin() + 1, default_min_time);
  int count = int(args.size());
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  add_machine_context();
  setup();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace vera_bench
