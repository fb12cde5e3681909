// SPDX-License-Identifier: Apache-2.0
// Mixed-adapter batches against one adapter, a loop over adapters, and LoRA-style per-adapter GEMMs.
//
// One layer, n = 1024 rows, 768 x 768, VeRA rank 256; the rows are spread over k adapters
// (k = 1, 10, 100, 1000), either shuffled or grouped by adapter (the serving layout, where each
// request's tokens are consecutive). Peers measured in the same run:
//   base_gemm      X W0^T alone: the floor every method pays
//   single         the core's vera::forward with one adapter on the whole batch (the target)
//   mixed          vera::mixed_forward: each row through its own adapter, shared GEMMs
//   loop           the core's vera::forward on each adapter's rows in turn (gather, run, scatter)
//   lora           LoRA rank 16: X W0^T once, then a low-rank GEMM pair per adapter on its rows
// `_train` variants add the backward: gradients of every adapter present and dL/dX.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include <vera/multi.hpp>

namespace {

using matrix = Eigen::MatrixXf;
using index = Eigen::Index;

constexpr index rows = 1024;
constexpr index in = 768;
constexpr index out = 768;
constexpr index rank = 256;
constexpr index lora_rank = 16;

matrix random_matrix(std::mt19937& rng, index r, index c, float scale) {
  std::uniform_real_distribution<float> uniform(-scale, scale);
  matrix m(r, c);
  for (index i = 0; i < m.size(); ++i) m.data()[i] = uniform(rng);
  return m;
}

struct layer_inputs {
  vera::projection<float> shared{{/*seed=*/0, rank, in, out}};
  matrix x, w0, g;
  Eigen::VectorXf bias;
  layer_inputs() {
    std::mt19937 rng(1);
    x = random_matrix(rng, rows, in, 1.0f);
    w0 = random_matrix(rng, out, in, 0.05f);
    g = random_matrix(rng, rows, out, 1.0f);
    bias = random_matrix(rng, out, 1, 0.1f);
  }
};

const layer_inputs& inputs() {
  static const layer_inputs values;
  return values;
}

// k adapters in every form the peers need, built once per k.
struct population {
  vera::adapter_set<float> set;
  std::vector<vera::adapter<float>> singles;  // the same adapters as standalone core adapters
  std::vector<matrix> lora_a, lora_b;         // LoRA: A (16 x in), B (out x 16) per adapter
  std::vector<int> shuffled, grouped;         // row assignments
  std::vector<std::vector<index>> rows_of;    // the shuffled assignment, adapter by adapter
  index largest_group = 0;

  explicit population(int k) : set(inputs().shared, in, out) {
    std::mt19937 rng(static_cast<std::uint32_t>(k));
    for (int a = 0; a < k; ++a) {
      vera::adapter_options options;
      options.init = vera::init_kind::random;
      options.init_seed = static_cast<std::uint64_t>(a);
      const vera::adapter_id id = set.add(options);
      singles.push_back(set.to_adapter(id));
      lora_a.push_back(random_matrix(rng, lora_rank, in, 0.05f));
      lora_b.push_back(random_matrix(rng, out, lora_rank, 0.05f));
    }
    std::uniform_int_distribution<int> pick(0, k - 1);
    shuffled.resize(rows);
    for (int& id : shuffled) id = pick(rng);
    grouped = shuffled;
    std::sort(grouped.begin(), grouped.end());
    rows_of.resize(static_cast<std::size_t>(k));
    for (index i = 0; i < rows; ++i) rows_of[static_cast<std::size_t>(shuffled[static_cast<std::size_t>(i)])].push_back(i);
    for (const auto& group : rows_of) largest_group = std::max(largest_group, static_cast<index>(group.size()));
  }
};

const population& adapters(int k) {
  static std::map<int, std::unique_ptr<population>> built;
  auto& slot = built[k];
  if (!slot) slot = std::make_unique<population>(k);
  return *slot;
}

void set_rows_processed(benchmark::State& state) {
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * rows);
}

// ---------------------------------------------------------------------------------- forward

void base_gemm(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  matrix y(rows, out);
  for (auto _ : state) {
    y.noalias() = in_.x * in_.w0.transpose();
    benchmark::DoNotOptimize(y.data());
  }
  set_rows_processed(state);
}

// Arg: 0 = the core's automatic order, 1 = low-rank order forced.
void single_forward(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  const vera::adapter<float>& ad = adapters(1).singles[0];
  const vera::order order = state.range(0) == 0 ? vera::order::automatic : vera::order::low_rank;
  vera::workspace<float> ws;
  matrix y(rows, out);
  for (auto _ : state) {
    y = vera::forward(in_.x, in_.w0, in_.bias, ad).using_workspace(ws).with_order(order);
    benchmark::DoNotOptimize(y.data());
  }
  set_rows_processed(state);
}

// Args: k, grouped (0 = shuffled rows, 1 = rows grouped by adapter).
void mixed_forward(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  const population& pop = adapters(static_cast<int>(state.range(0)));
  const std::vector<int>& ids = state.range(1) == 0 ? pop.shuffled : pop.grouped;
  vera::mixed_workspace<float> ws;
  matrix y(rows, out);
  for (auto _ : state) {
    y = vera::mixed_forward(in_.x, in_.w0, in_.bias, pop.set, ids).using_workspace(ws);
    benchmark::DoNotOptimize(y.data());
  }
  set_rows_processed(state);
}

void loop_forward(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  const population& pop = adapters(static_cast<int>(state.range(0)));
  vera::workspace<float> ws;
  matrix y(rows, out), xa(pop.largest_group, in), ya(pop.largest_group, out);
  for (auto _ : state) {
    for (std::size_t a = 0; a < pop.rows_of.size(); ++a) {
      const auto& group = pop.rows_of[a];
      if (group.empty()) continue;
      const auto count = static_cast<index>(group.size());
      xa.topRows(count) = in_.x(group, Eigen::all);
      auto ya_rows = ya.topRows(count);
      ya_rows = vera::forward(xa.topRows(count), in_.w0, in_.bias, pop.singles[a]).using_workspace(ws);
      y(group, Eigen::all) = ya_rows;
    }
    benchmark::DoNotOptimize(y.data());
  }
  set_rows_processed(state);
}

void lora_forward(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  const population& pop = adapters(static_cast<int>(state.range(0)));
  matrix y(rows, out), xa(pop.largest_group, in), h(pop.largest_group, lora_rank), ya(pop.largest_group, out);
  for (auto _ : state) {
    y.rowwise() = in_.bias.transpose();
    y.noalias() += in_.x * in_.w0.transpose();
    for (std::size_t a = 0; a < pop.rows_of.size(); ++a) {
      const auto& group = pop.rows_of[a];
      if (group.empty()) continue;
      const auto count = static_cast<index>(group.size());
      xa.topRows(count) = in_.x(group, Eigen::all);
      h.topRows(count).noalias() = xa.topRows(count) * pop.lora_a[a].transpose();
      ya.topRows(count).noalias() = h.topRows(count) * pop.lora_b[a].transpose();
      y(group, Eigen::all) += ya.topRows(count);
    }
    benchmark::DoNotOptimize(y.data());
  }
  set_rows_processed(state);
}

// ------------------------------------------------------------------------ forward + backward

void single_train(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  const vera::adapter<float>& ad = adapters(1).singles[0];
  const vera::order order = state.range(0) == 0 ? vera::order::automatic : vera::order::low_rank;
  vera::workspace<float> ws;
  vera::forward_context<float> ctx;
  vera::gradients<float> grads(ad);
  matrix y(rows, out), dx(rows, in);
  for (auto _ : state) {
    y = vera::forward(in_.x, in_.w0, in_.bias, ad).train(ctx).using_workspace(ws).with_order(order);
    grads = vera::parameter_gradients(in_.g, ad, ctx).using_workspace(ws);
    dx = vera::input_gradient(in_.g, in_.w0, ad, ctx).using_workspace(ws).with_order(order);
    benchmark::DoNotOptimize(dx.data());
  }
  set_rows_processed(state);
}

void mixed_train(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  const population& pop = adapters(static_cast<int>(state.range(0)));
  const std::vector<int>& ids = state.range(1) == 0 ? pop.shuffled : pop.grouped;
  vera::mixed_workspace<float> ws;
  vera::mixed_context<float> ctx;
  vera::mixed_gradients<float> grads(pop.set);
  matrix y(rows, out), dx(rows, in);
  for (auto _ : state) {
    y = vera::mixed_forward(in_.x, in_.w0, in_.bias, pop.set, ids).train(ctx).using_workspace(ws);
    vera::mixed_backward(in_.g, in_.w0, pop.set, ctx).using_workspace(ws).eval_to(grads, dx);
    benchmark::DoNotOptimize(dx.data());
  }
  set_rows_processed(state);
}

void loop_train(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  const population& pop = adapters(static_cast<int>(state.range(0)));
  const std::size_t k = pop.rows_of.size();
  vera::workspace<float> ws;
  std::vector<vera::forward_context<float>> contexts(k);
  std::vector<vera::gradients<float>> grads;
  for (const auto& ad : pop.singles) grads.emplace_back(ad);
  matrix y(rows, out), dx(rows, in);
  matrix xa(pop.largest_group, in), ga(pop.largest_group, out), ya(pop.largest_group, out),
      dxa(pop.largest_group, in);
  for (auto _ : state) {
    for (std::size_t a = 0; a < k; ++a) {
      const auto& group = pop.rows_of[a];
      if (group.empty()) continue;
      const auto count = static_cast<index>(group.size());
      xa.topRows(count) = in_.x(group, Eigen::all);
      ga.topRows(count) = in_.g(group, Eigen::all);
      auto ya_rows = ya.topRows(count);
      ya_rows = vera::forward(xa.topRows(count), in_.w0, in_.bias, pop.singles[a]).train(contexts[a]).using_workspace(ws);
      y(group, Eigen::all) = ya_rows;
      grads[a] = vera::parameter_gradients(ga.topRows(count), pop.singles[a], contexts[a]).using_workspace(ws);
      auto dxa_rows = dxa.topRows(count);
      dxa_rows = vera::input_gradient(ga.topRows(count), in_.w0, pop.singles[a], contexts[a]).using_workspace(ws);
      dx(group, Eigen::all) = dxa_rows;
    }
    benchmark::DoNotOptimize(dx.data());
  }
  set_rows_processed(state);
}

void lora_train(benchmark::State& state) {
  const layer_inputs& in_ = inputs();
  const population& pop = adapters(static_cast<int>(state.range(0)));
  const std::size_t k = pop.rows_of.size();
  std::vector<matrix> grad_a(k, matrix(lora_rank, in)), grad_b(k, matrix(out, lora_rank));
  matrix y(rows, out), dx(rows, in), h_all(rows, lora_rank);
  matrix xa(pop.largest_group, in), ga(pop.largest_group, out), ya(pop.largest_group, out),
      t(pop.largest_group, lora_rank), dxa(pop.largest_group, in);
  for (auto _ : state) {
    // Forward: the shared base GEMM, then each adapter's pair on its rows; H kept for backward.
    y.rowwise() = in_.bias.transpose();
    y.noalias() += in_.x * in_.w0.transpose();
    index offset = 0;
    for (std::size_t a = 0; a < k; ++a) {
      const auto& group = pop.rows_of[a];
      if (group.empty()) continue;
      const auto count = static_cast<index>(group.size());
      xa.topRows(count) = in_.x(group, Eigen::all);
      auto h = h_all.middleRows(offset, count);
      h.noalias() = xa.topRows(count) * pop.lora_a[a].transpose();
      ya.topRows(count).noalias() = h * pop.lora_b[a].transpose();
      y(group, Eigen::all) += ya.topRows(count);
      offset += count;
    }
    // Backward: dX = G W0 once, then per adapter dB = G_a^T H_a, T = G_a B, dA = T^T X_a, dX_a += T A.
    dx.noalias() = in_.g * in_.w0;
    offset = 0;
    for (std::size_t a = 0; a < k; ++a) {
      const auto& group = pop.rows_of[a];
      if (group.empty()) continue;
      const auto count = static_cast<index>(group.size());
      xa.topRows(count) = in_.x(group, Eigen::all);
      ga.topRows(count) = in_.g(group, Eigen::all);
      const auto h = h_all.middleRows(offset, count);
      grad_b[a].noalias() = ga.topRows(count).transpose() * h;
      t.topRows(count).noalias() = ga.topRows(count) * pop.lora_b[a];
      grad_a[a].noalias() = t.topRows(count).transpose() * xa.topRows(count);
      dxa.topRows(count).noalias() = t.topRows(count) * pop.lora_a[a];
      dx(group, Eigen::all) += dxa.topRows(count);
      offset += count;
    }
    benchmark::DoNotOptimize(dx.data());
  }
  set_rows_processed(state);
}

double minimum(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

void adapter_counts(benchmark::internal::Benchmark* b) {
  for (int k : {1, 10, 100, 1000}) b->Arg(k);
}
void adapter_counts_and_layouts(benchmark::internal::Benchmark* b) {
  for (int grouped : {0, 1}) {
    for (int k : {1, 10, 100, 1000}) b->Args({k, grouped});
  }
}

// Repetitions with a "min" statistic: on a shared machine the fastest repetition is the one
// least disturbed by other work.
#define VERA_BENCH(fn) \
  BENCHMARK(fn)->Unit(benchmark::kMillisecond)->Repetitions(3)->ComputeStatistics("min", minimum)

VERA_BENCH(base_gemm);
VERA_BENCH(single_forward)->Arg(0)->Arg(1);
VERA_BENCH(mixed_forward)->Apply(adapter_counts_and_layouts);
VERA_BENCH(loop_forward)->Apply(adapter_counts);
VERA_BENCH(lora_forward)->Apply(adapter_counts);
VERA_BENCH(single_train)->Arg(0)->Arg(1);
VERA_BENCH(mixed_train)->Apply(adapter_counts_and_layouts);
VERA_BENCH(loop_train)->Apply(adapter_counts);
VERA_BENCH(lora_train)->Apply(adapter_counts);

}  // namespace

BENCHMARK_MAIN();
