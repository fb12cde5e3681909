// SPDX-License-Identifier: Apache-2.0
// GPU timings of vera's CUDA backend (forward, training step, merge) next to the cuBLAS floor.
//
// Plain main timed with CUDA events, so it builds wherever nvcc does. Shapes match
// bench/cuda_vs_peft.py: RoBERTa-like (768 x 768, r = 1024) and Llama-like (4096 x 4096, r = 256),
// n = 4096 tokens. Prints one line per measurement: median milliseconds and TFLOP/s.
#include <algorithm>
#include <cstdio>
#include <vector>

#include <vera/cuda.hpp>

namespace {

namespace vc = vera::cuda;
using vera::index;

struct shape {
  const char* name;
  index n, in, out, rank;
};

template <class F>
double median_ms(cudaStream_t stream, F&& step, int repeats = 20) {
  cudaEvent_t start, stop;
  vc::check(cudaEventCreate(&start), "event");
  vc::check(cudaEventCreate(&stop), "event");
  for (int i = 0; i < 3; ++i) step();  // warm-up: cuBLAS heuristics, clocks
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

template <class T>
void run(const vc::handle& h, const shape& s, const char* type) {
  const vc::stream_context& ctx = h.context();
  const vera::projection_spec spec{0, s.rank, s.in, s.out, vera::generator::philox};
  vc::device_projection<T> projection(spec, ctx.stream);
  vc::device_buffer<float> lambda_b(static_cast<std::size_t>(s.out));
  vc::device_buffer<float> lambda_d(static_cast<std::size_t>(s.rank));
  vc::device_buffer<float> grad_b(static_cast<std::size_t>(s.out));
  vc::device_buffer<float> grad_d(static_cast<std::size_t>(s.rank));
  // Values do not matter for timing; zeroed memory keeps every result finite.
  vc::check(cudaMemset(lambda_b.data(), 0, sizeof(float) * s.out), "memset");
  vc::check(cudaMemset(lambda_d.data(), 0, sizeof(float) * s.rank), "memset");
  const vc::layer_ref<T> layer{projection.view(), s.in, s.out, s.rank, lambda_b.data(),
                               lambda_d.data(), false};
  vc::device_buffer<T> x(static_cast<std::size_t>(s.n * s.in)), w0(static_cast<std::size_t>(s.out * s.in));
  vc::device_buffer<T> y(static_cast<std::size_t>(s.n * s.out)), g(static_cast<std::size_t>(s.n * s.out));
  vc::device_buffer<T> p(static_cast<std::size_t>(s.n * s.rank)), dx(static_cast<std::size_t>(s.n * s.in));
  for (auto* buffer : {&x, &w0, &y, &g, &p, &dx}) {
    vc::check(cudaMemset(buffer->data(), 0, sizeof(T) * buffer->size()), "memset");
  }
  vc::workspace ws;
  ws.reserve(vc::workspace_bytes(layer, s.n));
  const auto X = vc::dense(x.data(), s.n, s.in);
  const auto W = vc::dense(w0.data(), s.out, s.in);
  const auto Y = vc::dense(y.data(), s.n, s.out);
  const auto G = vc::dense(g.data(), s.n, s.out);
  const auto P = vc::dense(p.data(), s.n, s.rank);
  const auto DX = vc::dense(dx.data(), s.n, s.in);

  const double base = 2.0 * s.n * s.in * s.out;
  const double adapter = 2.0 * s.n * s.rank * (s.in + s.out);
  const double floor_ms = median_ms(ctx.stream, [&] {
    vc::detail::gemm_row_major<T, T>(ctx, false, true, s.n, s.out, s.in, 1.0f, x.data(), s.in,
                                     w0.data(), s.in, 0.0f, y.data(), s.out, "floor");
  });
  report(s, type, "cuBLAS floor X W0^T", floor_ms, base);
  const double forward_ms = median_ms(ctx.stream, [&] {
    vc::forward(ctx, layer, X, W, nullptr, Y, ws.ref());
  });
  report(s, type, "forward", forward_ms, base + adapter);
  const double step_ms = median_ms(ctx.stream, [&] {
    vc::forward_train(ctx, layer, X, W, nullptr, Y, P, ws.ref());
    vc::parameter_gradients(ctx, layer, G, P, grad_b.data(), grad_d.data(), ws.ref());
    vc::input_gradient(ctx, layer, G, W, DX, ws.ref());
  });
  // Forward, M = G^T P, G W0, G (Λb B Λd) and that times A.
  report(s, type, "forward + backward", step_ms,
         2 * base + adapter + 2.0 * s.n * s.out * s.rank * 2 + 2.0 * s.n * s.rank * s.in);
  const double merge_ms = median_ms(ctx.stream, [&] { vc::merge(ctx, layer, W, ws.ref()); });
  report(s, type, "merge", merge_ms, 2.0 * s.out * s.rank * s.in);
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  cudaStream_t stream = nullptr;
  vc::check(cudaStreamCreate(&stream), "cudaStreamCreate");
  {
    const vc::handle h(stream);
    for (const shape& s : {shape{"roberta", 4096, 768, 768, 1024}, shape{"llama", 4096, 4096, 4096, 256}}) {
      run<float>(h, s, "float32");
      run<__nv_bfloat16>(h, s, "bfloat16");
    }
  }
  (void)cudaStreamDestroy(stream);
  return 0;
}
