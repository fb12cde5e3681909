// SPDX-License-Identifier: Apache-2.0
// CUDA backend on a GPU: every operation against the float64 reference; skips without a device.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <vera/cuda.hpp>

#include "harness.cuh"
#include "reference.hpp"

namespace {

using vera::index;
namespace vc = vera::cuda;

template <class T>
T to_storage(double v) {
  return vc::detail::host_round<T>(static_cast<float>(v));
}
float to_host(float v) { return v; }
float to_host(__half v) { return __half2float(v); }
float to_host(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
struct device_array {
  vc::device_buffer<T> buffer;
  index rows = 0, cols = 0;
  device_array(const std::vector<double>& host, index r, index c)
      : buffer(static_cast<std::size_t>(r * c)), rows(r), cols(c) {
    std::vector<T> staged(host.size());
    for (std::size_t i = 0; i < host.size(); ++i) staged[i] = to_storage<T>(host[i]);
    vc::check(cudaMemcpy(buffer.data(), staged.data(), sizeof(T) * staged.size(),
                         cudaMemcpyHostToDevice), "test upload");
  }
  device_array(index r, index c) : buffer(static_cast<std::size_t>(r * c)), rows(r), cols(c) {}
  vc::matrix_ref<T> view() { return vc::dense(buffer.data(), rows, cols); }
  std::vector<double> download() const {
    std::vector<T> staged(static_cast<std::size_t>(rows * cols));
    vc::check(cudaMemcpy(staged.data(), buffer.data(), sizeof(T) * staged.size(),
                         cudaMemcpyDeviceToHost), "test download");
    std::vector<double> out(staged.size());
    for (std::size_t i = 0; i < staged.size(); ++i) out[i] = to_host(staged[i]);
    return out;
  }
};

// max |got - want| relative to the largest |want| (plus one, for all-small results).
bool close(const char* what, const std::vector<double>& got, const std::vector<double>& want,
           double tolerance) {
  double error = 0, scale = 1;
  for (std::size_t i = 0; i < want.size(); ++i) {
    error = std::fmax(error, std::fabs(got[i] - want[i]));
    scale = std::fmax(scale, std::fabs(want[i]));
  }
  const bool ok = got.size() == want.size() && error <= tolerance * scale;
  if (!ok) std::printf("  %s: max error %.3g, scale %.3g, tolerance %.3g\n", what, error, scale, tolerance);
  return ok;
}

std::vector<double> random_vector(std::mt19937& engine, index count, double spread = 1.0) {
  std::uniform_real_distribution<double> dist(-spread, spread);
  std::vector<double> v(static_cast<std::size_t>(count));
  for (double& x : v) x = dist(engine);
  return v;
}

std::uint32_t bits_of(float v) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

// A and B on the device, generated there (philox) or uploaded (PEFT's mt19937), against the CPU.
void projection_on_device(cudaStream_t stream, vera::generator kind) {
  const vera::projection_spec spec{0x0123456789abcdefull, 37, 129, 67, kind};
  const vera_test::host_projection cpu = vera_test::cpu_projection(spec);
  vc::device_projection<float> device(spec, stream);
  vc::check(cudaStreamSynchronize(stream), "projection sync");
  std::vector<float> a(cpu.a.size()), b(cpu.b.size());
  vc::check(cudaMemcpy(a.data(), device.view().a, sizeof(float) * a.size(), cudaMemcpyDeviceToHost), "a");
  vc::check(cudaMemcpy(b.data(), device.view().b, sizeof(float) * b.size(), cudaMemcpyDeviceToHost), "b");
  int mismatches = 0;
  for (std::size_t i = 0; i < a.size(); ++i) mismatches += bits_of(a[i]) != bits_of(cpu.a[i]);
  for (std::size_t i = 0; i < b.size(); ++i) mismatches += bits_of(b[i]) != bits_of(cpu.b[i]);
  VERA_CHECK(mismatches == 0);
}

struct scenario {
  const char* name;
  index n, in, out, rank;
  bool fan_in_fan_out;
  double dropout;
  bool bias;
  vera::generator kind = vera::generator::philox;
};

template <class T>
void run(const vc::handle& h, const scenario& s, double tolerance) {
  std::printf("%s (%s)\n", s.name, vc::storage<T>::name);
  const vc::stream_context& ctx = h.context();
  // The layer uses a slice of a larger projection, as PEFT layers do.
  const vera::projection_spec spec{11, s.rank + 3, s.in + 5, s.out + 2, s.kind};
  const vera_test::host_projection cpu = vera_test::cpu_projection(spec);
  vc::device_projection<T> projection(spec, ctx.stream);

  std::mt19937 engine(1234);
  vera_test::problem p;
  p.n = s.n; p.in = s.in; p.out = s.out; p.rank = s.rank; p.fan_in_fan_out = s.fan_in_fan_out;
  for (index k = 0; k < s.rank; ++k) {
    for (index i = 0; i < s.in; ++i) p.a.push_back(to_host(to_storage<T>(cpu.a[static_cast<std::size_t>(k * spec.max_in + i)])));
  }
  for (index o = 0; o < s.out; ++o) {
    for (index k = 0; k < s.rank; ++k) p.b.push_back(to_host(to_storage<T>(cpu.b[static_cast<std::size_t>(o * spec.rank + k)])));
  }
  p.lambda_b = random_vector(engine, s.out);
  p.lambda_d = random_vector(engine, s.rank);
  p.x = random_vector(engine, s.n * s.in);
  p.w0 = random_vector(engine, s.out * s.in, 0.2);
  if (s.bias) p.bias = random_vector(engine, s.out);
  p.g = random_vector(engine, s.n * s.out);
  // The reference sees the operands exactly as the device stores them.
  for (auto* v : {&p.x, &p.w0, &p.bias, &p.g}) {
    for (double& e : *v) e = to_host(to_storage<T>(e));
  }
  const vera::dropout_key mask{77, 5, s.dropout};
  p.mask = s.dropout > 0 ? &mask : nullptr;
  const vera_test::reference_result want = vera_test::naive_reference(p);

  device_array<float> lambda_b(p.lambda_b, s.out, 1), lambda_d(p.lambda_d, s.rank, 1);
  vc::layer_ref<T> layer{projection.view(), s.in, s.out, s.rank, lambda_b.buffer.data(),
                         lambda_d.buffer.data(), s.fan_in_fan_out};
  device_array<T> x(p.x, s.n, s.in), g(p.g, s.n, s.out);
  device_array<T> w0(p.w0, s.fan_in_fan_out ? s.in : s.out, s.fan_in_fan_out ? s.out : s.in);
  device_array<T> bias(s.bias ? p.bias : std::vector<double>(1, 0.0), 1, s.bias ? s.out : 1);
  device_array<T> y(s.n, s.out), projected(s.n, s.rank), grad_x(s.n, s.in);
  device_array<float> grad_b(s.out, 1), grad_d(s.rank, 1);
  vc::workspace ws;
  ws.reserve(vc::workspace_bytes(layer, s.n));
  const T* bias_data = s.bias ? bias.buffer.data() : nullptr;

  // Both association orders against the same reference; with dropout both run low-rank.
  for (const vera::order o : {vera::order::low_rank, vera::order::merged}) {
    std::printf("  order %s\n", o == vera::order::merged ? "merged" : "low-rank");
    vc::forward_train(ctx, layer, x.view(), w0.view(), bias_data, y.view(), projected.view(),
                      ws.ref(), p.mask, o);
    vc::parameter_gradients(ctx, layer, g.view(), projected.view(), grad_b.buffer.data(),
                            grad_d.buffer.data(), ws.ref());
    vc::input_gradient(ctx, layer, g.view(), w0.view(), grad_x.view(), ws.ref(), p.mask, false, o);
    vc::check(cudaStreamSynchronize(ctx.stream), "sync");
    VERA_CHECK(close("Y", y.download(), want.y, tolerance));
    VERA_CHECK(close("P", projected.download(), want.p, tolerance));
    VERA_CHECK(close("grad_b", grad_b.download(), want.grad_b, tolerance));
    VERA_CHECK(close("grad_d", grad_d.download(), want.grad_d, tolerance));
    VERA_CHECK(close("grad_X", grad_x.download(), want.grad_x, tolerance));

    // accumulate adds the same gradient again.
    vc::input_gradient(ctx, layer, g.view(), w0.view(), grad_x.view(), ws.ref(), p.mask, true, o);
    vc::check(cudaStreamSynchronize(ctx.stream), "sync");
    std::vector<double> twice = want.grad_x;
    for (double& v : twice) v *= 2;
    VERA_CHECK(close("grad_X accumulated", grad_x.download(), twice, tolerance));

    if (s.dropout == 0) {
      device_array<T> y_inference(s.n, s.out);
      vc::forward(ctx, layer, x.view(), w0.view(), bias_data, y_inference.view(), ws.ref(), o);
      vc::check(cudaStreamSynchronize(ctx.stream), "sync");
      VERA_CHECK(close("Y (inference)", y_inference.download(), want.y, tolerance));
    }
  }

  // Determinism: the reduction gives the same bits on a second run.
  const std::vector<double> first_b = grad_b.download(), first_d = grad_d.download();
  vc::parameter_gradients(ctx, layer, g.view(), projected.view(), grad_b.buffer.data(),
                          grad_d.buffer.data(), ws.ref());
  vc::check(cudaStreamSynchronize(ctx.stream), "sync");
  VERA_CHECK(grad_b.download() == first_b && grad_d.download() == first_d);

  // Merge, unmerge, safe merge (accepted, then rejected with a non-finite lambda_b).
  vc::merge(ctx, layer, w0.view(), ws.ref());
  vc::check(cudaStreamSynchronize(ctx.stream), "sync");
  VERA_CHECK(close("merged W0", w0.download(), want.merged, tolerance));
  vc::unmerge(ctx, layer, w0.view(), ws.ref());
  vc::check(cudaStreamSynchronize(ctx.stream), "sync");
  VERA_CHECK(close("unmerged W0", w0.download(), p.w0, tolerance));
  const std::vector<double> before = w0.download();
  vc::device_buffer<int> rejected(1);
  vc::safe_merge_sync(ctx, layer, w0.view(), ws.ref(), rejected.data());
  VERA_CHECK(close("safe-merged W0", w0.download(), want.merged, tolerance));
  vc::unmerge(ctx, layer, w0.view(), ws.ref());
  const float infinite = INFINITY;
  vc::check(cudaMemcpy(lambda_b.buffer.data(), &infinite, sizeof(float), cudaMemcpyHostToDevice), "inf");
  const std::vector<double> kept = w0.download();
  VERA_CHECK_THROWS(vc::safe_merge_sync(ctx, layer, w0.view(), ws.ref(), rejected.data()),
                    vera::value_error, "non-finite");
  VERA_CHECK(w0.download() == kept);
  (void)before;
}

}  // namespace

int main() {
  if (!vera_test::device_present()) return vera_test::skipped;
  try {
    cudaStream_t stream = nullptr;
    vc::check(cudaStreamCreate(&stream), "cudaStreamCreate");
    {
      const vc::handle h(stream);
      projection_on_device(stream, vera::generator::philox);
      projection_on_device(stream, vera::generator::peft);
      const scenario plain{"plain", 67, 37, 29, 13, false, 0.0, true};
      const scenario conv{"fan_in_fan_out", 33, 20, 24, 7, true, 0.0, false};
      const scenario dropped{"dropout 0.25", 41, 19, 23, 9, false, 0.25, true};
      const scenario single{"one row", 1, 5, 3, 2, false, 0.0, true};
      for (const scenario& s : {plain, conv, dropped, single}) run<float>(h, s, 1e-5);
      run<__half>(h, plain, 2e-2);
      run<__nv_bfloat16>(h, plain, 6e-2);
      run<__nv_bfloat16>(h, dropped, 6e-2);
      const scenario peft{"PEFT projection (uploaded)", 19, 21, 17, 6, false, 0.0, true, vera::generator::peft};
      run<float>(h, peft, 1e-5);
      run<__nv_bfloat16>(h, peft, 6e-2);
    }
    vc::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  } catch (const std::exception& e) {
    std::printf("unexpected exception: %s\n", e.what());
    return 1;
  }
  return vera_test::summary("cuda device checks");
}
