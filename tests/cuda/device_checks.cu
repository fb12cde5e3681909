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
  return vc::storage<T>::from_float(static_cast<float>(v));
}
float to_host(float v) { return v; }
float to_host(__half v) { return __half2float(v); }
float to_host(__nv_bfloat16 v) { return __bfloat162float(v); }

// A rows x cols device matrix with `pad` extra elements per row (stride cols + pad). Padding, and
// the whole of an output before it is written, hold NaN: an operation that reads memory it
// should not (padding, or a destination it overwrites) spreads NaN into a checked result.
template <class T>
struct device_array {
  vc::device_buffer<T> buffer;
  index rows = 0, cols = 0, stride = 0;
  device_array(const std::vector<double>& host, index r, index c, index pad = 0)
      : buffer(static_cast<std::size_t>(r * (c + pad))), rows(r), cols(c), stride(c + pad) {
    std::vector<double> padded(static_cast<std::size_t>(r * stride), std::nan(""));
    for (index i = 0; i < r; ++i) {
      for (index j = 0; j < c; ++j) padded[static_cast<std::size_t>(i * stride + j)] = host[static_cast<std::size_t>(i * c + j)];
    }
    upload(padded);
  }
  device_array(index r, index c, index pad = 0)
      : buffer(static_cast<std::size_t>(r * (c + pad))), rows(r), cols(c), stride(c + pad) {
    upload(std::vector<double>(static_cast<std::size_t>(r * stride), std::nan("")));
  }
  vc::matrix_ref<T> view() { return {buffer.data(), rows, cols, stride}; }
  std::vector<double> everything() const {
    std::vector<T> staged(static_cast<std::size_t>(rows * stride));
    vc::check(cudaMemcpy(staged.data(), buffer.data(), sizeof(T) * staged.size(),
                         cudaMemcpyDeviceToHost), "test download");
    std::vector<double> out(staged.size());
    for (std::size_t i = 0; i < staged.size(); ++i) out[i] = to_host(staged[i]);
    return out;
  }
  // The rows x cols values, densely.
  std::vector<double> download() const {
    const std::vector<double> all = everything();
    std::vector<double> out;
    out.reserve(static_cast<std::size_t>(rows * cols));
    for (index i = 0; i < rows; ++i) {
      for (index j = 0; j < cols; ++j) out.push_back(all[static_cast<std::size_t>(i * stride + j)]);
    }
    return out;
  }
  // True when no padding element was written.
  bool padding_intact() const {
    const std::vector<double> all = everything();
    for (index i = 0; i < rows; ++i) {
      for (index j = cols; j < stride; ++j) {
        if (!std::isnan(all[static_cast<std::size_t>(i * stride + j)])) return false;
      }
    }
    return true;
  }

 private:
  void upload(const std::vector<double>& values) {
    std::vector<T> staged(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) staged[i] = to_storage<T>(values[i]);
    vc::check(cudaMemcpy(buffer.data(), staged.data(), sizeof(T) * staged.size(),
                         cudaMemcpyHostToDevice), "test upload");
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

// The optimizer steps against the host optimizers (vera::optim) over the same gradients: several
// steps, two slots per call (the second without decay), 300 elements (more than one block).
void optimizers_on_device(cudaStream_t stream) {
  std::printf("optimizers\n");
  std::mt19937 engine(99);
  const index size = 300;
  const auto as_float = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  const std::vector<float> start = as_float(random_vector(engine, size));
  std::vector<std::vector<float>> gradients;
  for (int k = 0; k < 4; ++k) gradients.push_back(as_float(random_vector(engine, size, 0.5)));
  const std::vector<double> zeros(static_cast<std::size_t>(size), 0.0);
  const auto upload = [](float* dst, const std::vector<float>& host) {
    vc::check(cudaMemcpy(dst, host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice), "upload");
  };
  const auto to_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };

  // run(k, slots) performs step k on the given slots; both slots start from `start`.
  const auto check = [&](const char* what, const auto& step, const std::vector<float>& want_decay,
                         const std::vector<float>& want_plain) {
    device_array<float> value_a(to_double(start), size, 1), value_b(to_double(start), size, 1);
    device_array<float> grad(size, 1), state_a(zeros, size, 1), second_a(zeros, size, 1);
    device_array<float> state_b(zeros, size, 1), second_b(zeros, size, 1);
    for (std::size_t k = 0; k < gradients.size(); ++k) {
      upload(grad.buffer.data(), gradients[k]);
      step(k, vc::optimizer_slot{value_a.buffer.data(), grad.buffer.data(), state_a.buffer.data(),
                                 second_a.buffer.data(), size, true},
           vc::optimizer_slot{value_b.buffer.data(), grad.buffer.data(), state_b.buffer.data(),
                              second_b.buffer.data(), size, false});
    }
    vc::check(cudaStreamSynchronize(stream), "sync");
    std::printf("  %s\n", what);
    VERA_CHECK(close("value (decay)", value_a.download(), to_double(want_decay), 1e-6));
    VERA_CHECK(close("value (no decay)", value_b.download(), to_double(want_plain), 1e-6));
  };

  const vc::sgd_settings sgd{0.05, 0.9, 0.0, 0.01, true};
  check("sgd, Nesterov momentum, weight decay",
        [&](std::size_t k, vc::optimizer_slot a, vc::optimizer_slot b) { vc::sgd_step(stream, sgd, k == 0, {a, b}); },
        vera_test::cpu_sgd(start, gradients, {0.05, 0.9, 0.0, 0.01, true, true}),
        vera_test::cpu_sgd(start, gradients, {0.05, 0.9, 0.0, 0.01, true, false}));
  const vc::sgd_settings damped{0.1, 0.5, 0.25, 0.0, false};
  check("sgd, dampened momentum",
        [&](std::size_t k, vc::optimizer_slot a, vc::optimizer_slot b) { vc::sgd_step(stream, damped, k == 0, {a, b}); },
        vera_test::cpu_sgd(start, gradients, {0.1, 0.5, 0.25, 0.0, false, true}),
        vera_test::cpu_sgd(start, gradients, {0.1, 0.5, 0.25, 0.0, false, false}));
  const vc::adamw_settings adamw{0.01, 0.9, 0.99, 1e-8, 0.1};
  check("adamw, weight decay",
        [&](std::size_t k, vc::optimizer_slot a, vc::optimizer_slot b) { vc::adamw_step(stream, adamw, k + 1, {a, b}); },
        vera_test::cpu_adamw(start, gradients, {0.01, 0.9, 0.99, 1e-8, 0.1, true}),
        vera_test::cpu_adamw(start, gradients, {0.01, 0.9, 0.99, 1e-8, 0.1, false}));

  // A non-finite gradient element: with a flag, nothing changes and the flag is set.
  device_array<float> value(to_double(start), size, 1), grad(size, 1), first(zeros, size, 1), second(zeros, size, 1);
  std::vector<float> bad = gradients[0];
  bad[size - 1] = std::nanf("");
  upload(grad.buffer.data(), bad);
  vc::device_buffer<int> rejected(1);
  vc::adamw_step(stream, adamw, 1, {{value.buffer.data(), grad.buffer.data(), first.buffer.data(),
                                     second.buffer.data(), size, true}}, rejected.data());
  int flag = 0;
  vc::check(cudaMemcpy(&flag, rejected.data(), sizeof(int), cudaMemcpyDeviceToHost), "flag");
  VERA_CHECK(flag == 1);
  VERA_CHECK(value.download() == to_double(start) && first.download() == zeros && second.download() == zeros);
  upload(grad.buffer.data(), gradients[0]);
  vc::sgd_step(stream, sgd, true, {{value.buffer.data(), grad.buffer.data(), first.buffer.data(), nullptr, size, true}},
               rejected.data());
  vc::check(cudaMemcpy(&flag, rejected.data(), sizeof(int), cudaMemcpyDeviceToHost), "flag");
  VERA_CHECK(flag == 0);
  const std::vector<float> one_step = vera_test::cpu_sgd(start, {gradients[0]}, {0.05, 0.9, 0.0, 0.01, true, true});
  VERA_CHECK(close("value after an accepted step", value.download(), to_double(one_step), 1e-6));
}

struct scenario {
  const char* name;
  index n, in, out, rank;
  bool fan_in_fan_out;
  double dropout;
  bool bias;
  vera::generator kind = vera::generator::philox;
  index pad = 0;  // extra elements per row of every matrix operand (strided views)
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
  device_array<T> x(p.x, s.n, s.in, s.pad), g(p.g, s.n, s.out, s.pad);
  device_array<T> w0(p.w0, s.fan_in_fan_out ? s.in : s.out, s.fan_in_fan_out ? s.out : s.in, s.pad);
  device_array<T> bias(s.bias ? p.bias : std::vector<double>(1, 0.0), 1, s.bias ? s.out : 1);
  device_array<T> y(s.n, s.out, s.pad), projected(s.n, s.rank, s.pad), grad_x(s.n, s.in, s.pad);
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
      device_array<T> y_inference(s.n, s.out, s.pad);
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

  // The same step through the front-end's expressions (exec::cuda), in both orders, with a
  // forward context whose dropout key continues where the calls above had theirs.
  device_array<T> storage(s.n + 3, s.rank, s.pad), y_expr(s.n, s.out, s.pad), dx_expr(s.n, s.in, s.pad);
  device_array<T> dw(w0.rows, w0.cols, s.pad);
  device_array<float> gb_expr(s.out, 1), gd_expr(s.rank, 1);
  vc::forward_context<T> tc(storage.view(), s.dropout, mask.seed);
  for (const vera::order o : {vera::order::low_rank, vera::order::merged}) {
    tc.resume_at(mask.step);
    vera::forward(vera::exec::cuda{}, x.view(), w0.view(), bias_data, layer)
        .train(tc).with_order(o).on(h).using_workspace(ws).eval_to(y_expr.view());
    vera::parameter_gradients(vera::exec::cuda{}, g.view(), layer, tc)
        .on(h).using_workspace(ws).eval_to({gb_expr.buffer.data(), gd_expr.buffer.data()});
    vera::input_gradient(vera::exec::cuda{}, g.view(), w0.view(), layer, tc)
        .with_order(o).on(h).using_workspace(ws).eval_to(dx_expr.view());
    vc::check(cudaStreamSynchronize(ctx.stream), "sync");
    VERA_CHECK(tc.ready() && tc.rows() == s.n && tc.mask_key().step == mask.step);
    VERA_CHECK(close("Y (expression)", y_expr.download(), want.y, tolerance));
    std::vector<double> kept_p = storage.download();
    kept_p.resize(want.p.size());  // the first n rows
    VERA_CHECK(close("P (expression)", kept_p, want.p, tolerance));
    VERA_CHECK(close("grad_b (expression)", gb_expr.download(), want.grad_b, tolerance));
    VERA_CHECK(close("grad_d (expression)", gd_expr.download(), want.grad_d, tolerance));
    VERA_CHECK(close("grad_X (expression)", dx_expr.download(), want.grad_x, tolerance));
    // add_to accumulates: Y and the gradients twice over.
    vera::forward(x.view(), w0.view(), bias_data, layer).with_order(o).on(h).using_workspace(ws)
        .add_to(y_expr.view());
    vera::parameter_gradients(g.view(), layer, tc).on(h).using_workspace(ws)
        .add_to({gb_expr.buffer.data(), gd_expr.buffer.data()});
    vc::check(cudaStreamSynchronize(ctx.stream), "sync");
    if (s.dropout == 0) {
      std::vector<double> twice_y = want.y;
      for (double& v : twice_y) v *= 2;
      VERA_CHECK(close("Y added (expression)", y_expr.download(), twice_y, tolerance));
    }
    std::vector<double> twice_b = want.grad_b, twice_d = want.grad_d;
    for (double& v : twice_b) v *= 2;
    for (double& v : twice_d) v *= 2;
    VERA_CHECK(close("grad_b added (expression)", gb_expr.download(), twice_b, tolerance));
    VERA_CHECK(close("grad_d added (expression)", gd_expr.download(), twice_d, tolerance));
  }
  // ΔW alone, then merged into and taken out of W0 through the expression.
  vera::delta_weight(layer).on(h).using_workspace(ws).eval_to(dw.view());
  vc::check(cudaStreamSynchronize(ctx.stream), "sync");
  std::vector<double> want_delta = want.merged;
  for (std::size_t i = 0; i < want_delta.size(); ++i) want_delta[i] -= p.w0[i];
  VERA_CHECK(close("ΔW (expression)", dw.download(), want_delta, tolerance));
  // W0 + ΔW into another matrix leaves W0 as it is.
  vera::merged_weight(w0.view(), layer).on(h).using_workspace(ws).eval_to(dw.view());
  vc::check(cudaStreamSynchronize(ctx.stream), "sync");
  VERA_CHECK(close("merged copy (expression)", dw.download(), want.merged, tolerance));
  VERA_CHECK(close("W0 after the merged copy", w0.download(), p.w0, 0.0));
  vera::delta_weight(layer).on(h).using_workspace(ws).add_to(w0.view());
  vc::check(cudaStreamSynchronize(ctx.stream), "sync");
  VERA_CHECK(close("merged W0 (expression)", w0.download(), want.merged, tolerance));
  vera::delta_weight(layer).on(h).using_workspace(ws).subtract_from(w0.view());
  vc::check(cudaStreamSynchronize(ctx.stream), "sync");
  VERA_CHECK(close("unmerged W0 (expression)", w0.download(), p.w0, tolerance));

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

  // No operation wrote into the padding of a strided view.
  for (const device_array<T>* a : {&x, &g, &w0, &y, &projected, &grad_x, &storage, &y_expr, &dx_expr, &dw}) {
    VERA_CHECK(a->padding_intact());
  }
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
      optimizers_on_device(stream);
      const scenario plain{"plain", 67, 37, 29, 13, false, 0.0, true};
      const scenario conv{"fan_in_fan_out", 33, 20, 24, 7, true, 0.0, false};
      const scenario dropped{"dropout 0.25", 41, 19, 23, 9, false, 0.25, true};
      const scenario single{"one row", 1, 5, 3, 2, false, 0.0, true};
      const scenario strided{"strided views, dropout", 23, 17, 19, 5, false, 0.25, true, vera::generator::philox, 3};
      const scenario strided_conv{"strided views, fan_in_fan_out", 21, 12, 16, 6, true, 0.0, true,
                                  vera::generator::philox, 2};
      // More ranks than a block has threads and more output rows than one reduction chunk.
      const scenario wide{"rank 270, out 70", 6, 9, 70, 270, false, 0.0, true};
      for (const scenario& s : {plain, conv, dropped, single, strided, strided_conv, wide}) run<float>(h, s, 1e-5);
      run<__nv_bfloat16>(h, strided, 6e-2);
      run<__half>(h, plain, 2e-2);
      run<__nv_bfloat16>(h, plain, 6e-2);
      run<__nv_bfloat16>(h, dropped, 6e-2);
      const scenario peft{"PEFT projection (uploaded)", 19, 21, 17, 6, false, 0.0, true, vera::generator::peft};
      run<float>(h, peft, 1e-5);
      run<__nv_bfloat16>(h, peft, 6e-2);
      // Shapes, strides and options drawn at random (fixed seed), empty batches included.
      std::mt19937 draw(2026);
      const auto pick = [&draw](vera::index low, vera::index high) {
        return std::uniform_int_distribution<vera::index>(low, high)(draw);
      };
      for (int i = 0; i < 12; ++i) {
        scenario s{"random", pick(0, 40), pick(1, 40), pick(1, 40), pick(1, 24), pick(0, 1) == 1,
                   pick(0, 2) == 0 ? 0.3 : 0.0, pick(0, 1) == 1,
                   pick(0, 1) == 1 ? vera::generator::peft : vera::generator::philox, pick(0, 3)};
        std::printf("random %d: n %ld, in %ld, out %ld, rank %ld, fan_in_fan_out %d, dropout %.1f, pad %ld\n", i,
                    long(s.n), long(s.in), long(s.out), long(s.rank), int(s.fan_in_fan_out), s.dropout, long(s.pad));
        run<float>(h, s, 1e-5);
      }
    }
    vc::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  } catch (const std::exception& e) {
    std::printf("unexpected exception: %s\n", e.what());
    return 1;
  }
  return vera_test::summary("cuda device checks");
}
