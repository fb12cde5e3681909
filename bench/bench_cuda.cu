// SPDX-License-Identifier: Apache-2.0
// GPU timings of vera's CUDA backend (forward, training step, merge) next to the cuBLAS floor.
//
// Plain main timed with CUDA events, so it builds wherever nvcc does. Shapes match
// bench/cuda_vs_peft.py: RoBERTa-like (768 x 768, r = 1024) and Llama-like (4096 x 4096, r = 256),
// n = 4096 tokens. Prints one line per measurement (median milliseconds and TFLOP/s), then one
// `ratio` line per operation: vera's time over its floor, the same GEMMs issued alone through
// cuBLAS on the same buffers:
//   forward             X W0^T, P = X A^T, Y += P S^T                 (S = Λb B Λd, out x rank)
//   forward + backward  the forward's three, M = G^T P (float), G W0, T = G S, T A
//   merge               W0 += S A
// TFLOP/s always counts the low-rank math's FLOPs, so an order that skips work shows above the
// GPU's rate. vera runs twice: in the order its cost model picks (at n = 4096 in float32 the
// merged one, X (W0 + ΔW)^T, for inference and grad_X; bfloat16 stays low-rank) and held to the
// low-rank order the floor and PEFT use.
// Operands are random (zeros would flatter the GPU's GEMM clocks); bench/cuda_table.py turns this
// output and cuda_vs_peft.py's into the table of docs/benchmarks.md. `--smoke` runs one small
// shape once per measurement: a check that the program runs, not a measurement.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <vera/cuda.hpp>

namespace {

namespace vc = vera::cuda;
using vera::index;

struct shape {
  const char* name;
  index n, in, out, rank;
};

// Timed repetitions and warm-up calls per measurement (--smoke: 1 and 0).
int repeats = 20;
int warm_up = 3;

template <class F>
double median_ms(cudaStream_t stream, F&& step) {
  cudaEvent_t start, stop;
  vc::check(cudaEventCreate(&start), "event");
  vc::check(cudaEventCreate(&stop), "event");
  for (int i = 0; i < warm_up; ++i) step();  // warm-up: cuBLAS heuristics, clocks
  std::vector<float> times;
  for (int i = 0; i < repeats; ++i) {
    vc::check(cudaEventRecord(start, stream), "record");
    step();
    vc::check(cudaEventRecord(stop, stream), "record");
    vc::check(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    vc::check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    times.push_back(ms);
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void report(const shape& s, const char* type, const char* what, double ms, double flops) {
  std::printf("%-8s %-9s %-26s %9.3f ms %8.1f TFLOP/s\n", s.name, type, what, ms,
              flops / (ms * 1e-3) / 1e12);
}

void report_ratio(const shape& s, const char* type, const char* what, double ms, double floor_ms) {
  std::printf("%-8s %-9s ratio %-20s %9.3f vera/floor\n", s.name, type, what, ms / floor_ms);
}

/// count values uniform in [-scale, scale), rounded to T on the host and copied to the device.
template <class T>
vc::device_buffer<T> random_buffer(std::size_t count, float scale, unsigned seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> uniform(-scale, scale);
  std::vector<T> host(count);
  for (T& v : host) v = static_cast<T>(uniform(engine));
  vc::device_buffer<T> buffer(count);
  vc::check(cudaMemcpy(buffer.data(), host.data(), sizeof(T) * count, cudaMemcpyHostToDevice), "cudaMemcpy");
  return buffer;
}

template <class T>
void run(const vc::handle& h, const shape& s, const char* type) {
  const vc::stream_context& ctx = h.context();
  const vera::projection_spec spec{0, s.rank, s.in, s.out, vera::generator::philox};
  vc::device_projection<T> projection(spec, ctx.stream);
  const auto count = [](index rows, index cols) { return static_cast<std::size_t>(rows * cols); };
  // lambda_b and lambda_d as after some training; W0 at nn.Linear's scale; X and G of order 1.
  vc::device_buffer<float> lambda_b = random_buffer<float>(count(s.out, 1), 0.1f, 1);
  vc::device_buffer<float> lambda_d = random_buffer<float>(count(s.rank, 1), 0.1f, 2);
  vc::device_buffer<float> grad_b(count(s.out, 1)), grad_d(count(s.rank, 1));
  const vc::layer_ref<T> layer{projection.view(), s.in, s.out, s.rank, lambda_b.data(),
                               lambda_d.data(), false};
  vc::device_buffer<T> x = random_buffer<T>(count(s.n, s.in), 1.0f, 3);
  vc::device_buffer<T> w0 = random_buffer<T>(count(s.out, s.in), 1.0f / std::sqrt(float(s.in)), 4);
  vc::device_buffer<T> g = random_buffer<T>(count(s.n, s.out), 1.0f, 5);
  vc::device_buffer<T> y(count(s.n, s.out)), p(count(s.n, s.rank)), dx(count(s.n, s.in));
  vc::workspace ws;
  ws.reserve(vc::workspace_bytes(layer, s.n));
  const auto X = vc::dense(x.data(), s.n, s.in);
  const auto W = vc::dense(w0.data(), s.out, s.in);
  const auto Y = vc::dense(y.data(), s.n, s.out);
  const auto G = vc::dense(g.data(), s.n, s.out);
  const auto P = vc::dense(p.data(), s.n, s.rank);
  const auto DX = vc::dense(dx.data(), s.n, s.in);

  // The floor's own operands: S stands for Λb B Λd, M for G^T P, T for G S.
  vc::device_buffer<T> scaled = random_buffer<T>(count(s.out, s.rank), 0.01f, 6);
  vc::device_buffer<T> thin(count(s.n, s.rank));
  vc::device_buffer<float> m(count(s.out, s.rank));
  const T* a = projection.view().a;
  const index lda = projection.view().max_in;
  const auto gemm = [&](bool ta, bool tb, index rows, index cols, index inner, const T* left, index ld_left,
                        const T* right, index ld_right, float beta, T* out, index ld_out) {
    vc::detail::gemm_row_major<T, T>(ctx, ta, tb, rows, cols, inner, 1.0f, left, ld_left, right, ld_right, beta,
                                     out, ld_out, "floor");
  };
  const auto floor_forward = [&] {
    gemm(false, true, s.n, s.out, s.in, x.data(), s.in, w0.data(), s.in, 0.0f, y.data(), s.out);
    gemm(false, true, s.n, s.rank, s.in, x.data(), s.in, a, lda, 0.0f, p.data(), s.rank);
    gemm(false, true, s.n, s.out, s.rank, p.data(), s.rank, scaled.data(), s.rank, 1.0f, y.data(), s.out);
  };
  const auto floor_backward = [&] {
    vc::detail::gemm_row_major<T, float>(ctx, true, false, s.out, s.rank, s.n, 1.0f, g.data(), s.out, p.data(),
                                         s.rank, 0.0f, m.data(), s.rank, "floor");
    gemm(false, false, s.n, s.in, s.out, g.data(), s.out, w0.data(), s.in, 0.0f, dx.data(), s.in);
    gemm(false, false, s.n, s.rank, s.out, g.data(), s.out, scaled.data(), s.rank, 0.0f, thin.data(), s.rank);
    gemm(false, false, s.n, s.in, s.rank, thin.data(), s.rank, a, lda, 1.0f, dx.data(), s.in);
  };

  const double base = 2.0 * s.n * s.in * s.out;
  const double adapter = 2.0 * s.n * s.rank * (s.in + s.out);
  // Forward, then M = G^T P, G W0, G (Λb B Λd) and that times A.
  const double step = 2 * base + adapter + 2.0 * s.n * s.out * s.rank * 2 + 2.0 * s.n * s.rank * s.in;
  const double merge_flops = 2.0 * s.out * s.rank * s.in;

  report(s, type, "cuBLAS floor X W0^T", median_ms(ctx.stream, [&] {
           gemm(false, true, s.n, s.out, s.in, x.data(), s.in, w0.data(), s.in, 0.0f, y.data(), s.out);
         }), base);
  const double floor_forward_ms = median_ms(ctx.stream, floor_forward);
  report(s, type, "floor forward", floor_forward_ms, base + adapter);
  const double floor_step_ms = median_ms(ctx.stream, [&] {
    floor_forward();
    floor_backward();
  });
  report(s, type, "floor forward + backward", floor_step_ms, step);
  // The merge floor adds S A into a copy of W0's buffer so that W0 stays as it is.
  vc::device_buffer<T> merged(count(s.out, s.in));
  vc::check(cudaMemcpy(merged.data(), w0.data(), sizeof(T) * merged.size(), cudaMemcpyDeviceToDevice), "cudaMemcpy");
  const double floor_merge_ms = median_ms(ctx.stream, [&] {
    gemm(false, false, s.out, s.in, s.rank, scaled.data(), s.rank, a, lda, 1.0f, merged.data(), s.in);
  });
  report(s, type, "floor merge", floor_merge_ms, merge_flops);

  // vera as it runs by default (the cost model's order), then held to the low-rank order that
  // the floor and PEFT compute.
  const auto forward = [&](vera::order o) {
    return median_ms(ctx.stream, [&] { vc::forward(ctx, layer, X, W, nullptr, Y, ws.ref(), o); });
  };
  const auto training_step = [&](vera::order o) {
    return median_ms(ctx.stream, [&] {
      vc::forward_train(ctx, layer, X, W, nullptr, Y, P, ws.ref(), nullptr, o);
      vc::parameter_gradients(ctx, layer, G, P, grad_b.data(), grad_d.data(), ws.ref());
      vc::input_gradient(ctx, layer, G, W, DX, ws.ref(), nullptr, false, o);
    });
  };
  const double forward_ms = forward(vera::order::automatic);
  report(s, type, "forward", forward_ms, base + adapter);
  const double forward_low_ms = forward(vera::order::low_rank);
  report(s, type, "forward (low-rank)", forward_low_ms, base + adapter);
  const double step_ms = training_step(vera::order::automatic);
  report(s, type, "forward + backward", step_ms, step);
  const double step_low_ms = training_step(vera::order::low_rank);
  report(s, type, "forward + backward (low-rank)", step_low_ms, step);
  // Merging the same W0 again and again: with lambdas of 0.1 the weight grows slowly and stays
  // finite over the 23 calls.
  const double merge_ms = median_ms(ctx.stream, [&] { vc::merge(ctx, layer, W, ws.ref()); });
  report(s, type, "merge", merge_ms, merge_flops);

  report_ratio(s, type, "forward", forward_ms, floor_forward_ms);
  report_ratio(s, type, "forward (low-rank)", forward_low_ms, floor_forward_ms);
  report_ratio(s, type, "forward + backward", step_ms, floor_step_ms);
  report_ratio(s, type, "forward + backward (low-rank)", step_low_ms, floor_step_ms);
  report_ratio(s, type, "merge", merge_ms, floor_merge_ms);
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::string(argv[1]) == "--smoke";
  if (smoke) {
    repeats = 1;
    warm_up = 0;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp props{};
  vc::check(cudaGetDeviceProperties(&props, 0), "cudaGetDeviceProperties");
  int runtime = 0, driver = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  (void)cudaDriverGetVersion(&driver);
  std::printf("device %s, %d SMs, CUDA runtime %d, driver API %d\n", props.name, props.multiProcessorCount,
              runtime, driver);
  cudaStream_t stream = nullptr;
  vc::check(cudaStreamCreate(&stream), "cudaStreamCreate");
  {
    const vc::handle h(stream);
    const std::vector<shape> shapes =
        smoke ? std::vector<shape>{{"smoke", 64, 48, 40, 24}}
              : std::vector<shape>{{"roberta", 4096, 768, 768, 1024}, {"llama", 4096, 4096, 4096, 256}};
    for (const shape& s : shapes) {
      run<float>(h, s, "float32");
      run<__nv_bfloat16>(h, s, "bfloat16");
    }
  }
  (void)cudaStreamDestroy(stream);
  return 0;
}
