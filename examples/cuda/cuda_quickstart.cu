// SPDX-License-Identifier: Apache-2.0
// The CUDA backend end to end: one frozen linear layer adapted to a new regression target on the
// GPU by training only b and d, then merged for inference.
//
// The program owns every device buffer and the stream; vera only enqueues work on them. The
// projection is generated on the device (the same bits as the CPU's), the teacher's outputs come
// from the direct call vera::cuda::forward with other lambdas, and each step writes the
// front-end's expressions on exec::cuda: a training forward that keeps P in a forward context,
// then the parameter gradients, and a momentum-SGD step on the device updates b and d in place.
// Only the loss and its gradient with respect to Y are computed on the host, for brevity.
// Exits 77 (CTest: skipped) without a GPU.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <random>
#include <vector>

#include <vera/cuda.hpp>

namespace {

namespace vc = vera::cuda;
using vera::index;

std::vector<float> random_vector(std::mt19937& rng, index count, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(static_cast<std::size_t>(count));
  for (float& x : v) x = normal(rng);
  return v;
}

vc::device_buffer<float> to_device(const std::vector<float>& host) {
  vc::device_buffer<float> buffer(host.size());
  vc::check(cudaMemcpy(buffer.data(), host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice),
            "upload");
  return buffer;
}

void upload(const std::vector<float>& host, vc::device_buffer<float>& buffer, cudaStream_t stream) {
  vc::check(cudaMemcpyAsync(buffer.data(), host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice,
                            stream),
            "upload");
}

void download(const vc::device_buffer<float>& buffer, std::vector<float>& host, cudaStream_t stream) {
  vc::check(cudaMemcpyAsync(host.data(), buffer.data(), sizeof(float) * host.size(), cudaMemcpyDeviceToHost,
                            stream),
            "download");
  vc::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

int train(cudaStream_t stream, int steps) {
  const index in = 64, out = 32, rank = 32, batch = 128;
  std::mt19937 rng(7);

  const vc::handle h(stream);
  const vc::stream_context& ctx = h.context();
  const vera::projection_spec spec{/*seed=*/0, rank, /*max_in=*/in, /*max_out=*/out, vera::generator::philox};
  const vc::device_projection<float> projection(spec, stream);

  // The student starts as PEFT does (b = 0, d = 0.1); the teacher's lambdas are random, so the
  // target is the frozen layer moved by an update of VeRA's own form.
  std::vector<float> b(static_cast<std::size_t>(out), 0.0f), d(static_cast<std::size_t>(rank), 0.1f);
  vc::device_buffer<float> lambda_b = to_device(b), lambda_d = to_device(d);
  std::vector<float> teacher_b = random_vector(rng, out, 0.3f);
  vc::device_buffer<float> teacher_lambda_b = to_device(teacher_b);
  vc::device_buffer<float> teacher_lambda_d = to_device(random_vector(rng, rank, 1.0f));
  const vc::layer_ref<float> student{projection.view(), in, out, rank, lambda_b.data(), lambda_d.data(), false};
  const vc::layer_ref<float> teacher{projection.view(), in, out, rank, teacher_lambda_b.data(),
                                     teacher_lambda_d.data(), false};

  vc::device_buffer<float> w0 = to_device(random_vector(rng, out * in, 0.15f));
  vc::device_buffer<float> x(static_cast<std::size_t>(batch * in)), y(static_cast<std::size_t>(batch * out));
  vc::device_buffer<float> target(static_cast<std::size_t>(batch * out)), g(static_cast<std::size_t>(batch * out));
  vc::device_buffer<float> p(static_cast<std::size_t>(batch * rank));
  vc::device_buffer<float> grad_b(static_cast<std::size_t>(out)), grad_d(static_cast<std::size_t>(rank));
  // Momentum buffers of the optimizer, on the device like everything it updates.
  vc::device_buffer<float> momentum_b(static_cast<std::size_t>(out)), momentum_d(static_cast<std::size_t>(rank));
  // One workspace, reserved once, serves every call below: no allocation inside the loop.
  vc::workspace ws;
  ws.reserve(vc::workspace_bytes(student, batch));

  const auto X = vc::dense(x.data(), batch, in);
  const auto W0 = vc::dense(w0.data(), out, in);
  const auto Y = vc::dense(y.data(), batch, out);
  const auto P = vc::dense(p.data(), batch, rank);
  const auto G = vc::dense(g.data(), batch, out);
  // P of each training forward (and its dropout key, unused here) for the backward.
  vc::forward_context<float> context(P);
  std::vector<float> host_x, host_y(static_cast<std::size_t>(batch * out)), host_target(host_y.size());
  std::vector<float> host_g(host_y.size());
  const vc::sgd_settings sgd{/*lr=*/0.05, /*momentum=*/0.9};
  const vc::optimizer_slot slot_b{lambda_b.data(), grad_b.data(), momentum_b.data(), nullptr, out, false};
  const vc::optimizer_slot slot_d{lambda_d.data(), grad_d.data(), momentum_d.data(), nullptr, rank, false};
  float first_loss = 0.0f, loss = 0.0f;

  std::printf("vera %s CUDA quickstart: %ldx%ld layer, rank %ld, batch %ld, %d steps\n", vera::version_string,
              long(out), long(in), long(rank), long(batch), steps);
  for (int step = 0; step <= steps; ++step) {
    host_x = random_vector(rng, batch * in, 1.0f);
    upload(host_x, x, stream);
    vc::forward(ctx, teacher, X, W0, nullptr, vc::dense(target.data(), batch, out), ws.ref());
    vera::forward(vera::exec::cuda{}, X, W0, nullptr, student).train(context).on(h).using_workspace(ws).eval_to(Y);
    download(target, host_target, stream);
    download(y, host_y, stream);

    // 0.5 * mean over rows of |y - target|^2 and its gradient with respect to y.
    double squared = 0.0;
    for (std::size_t i = 0; i < host_y.size(); ++i) {
      const float diff = host_y[i] - host_target[i];
      squared += double(diff) * diff;
      host_g[i] = diff / float(batch);
    }
    loss = float(0.5 * squared / double(batch));
    if (step == 0) first_loss = loss;
    if (step % (steps / 10) == 0) std::printf("step %4d  loss %.4e\n", step, double(loss));

    upload(host_g, g, stream);
    vera::parameter_gradients(vera::exec::cuda{}, G, student, context)
        .on(h)
        .using_workspace(ws)
        .eval_to({grad_b.data(), grad_d.data()});
    vc::sgd_step(stream, sgd, /*first_step=*/step == 0, {slot_b, slot_d});
  }

  // Merging folds the adapter into W0: the merged weight alone (a layer with b = 0 adds nothing)
  // gives the adapted layer's outputs.
  vera::forward(vera::exec::cuda{}, X, W0, nullptr, student).on(h).using_workspace(ws).eval_to(Y);
  download(y, host_y, stream);
  vera::delta_weight(student).on(h).using_workspace(ws).add_to(W0);  // the merge: W0 += ΔW
  vc::device_buffer<float> zero_b = to_device(std::vector<float>(b.size(), 0.0f));
  const vc::layer_ref<float> plain{projection.view(), in, out, rank, zero_b.data(), lambda_d.data(), false};
  vc::forward(ctx, plain, X, W0, nullptr, vc::dense(target.data(), batch, out), ws.ref());
  download(target, host_target, stream);
  float merge_gap = 0.0f;
  for (std::size_t i = 0; i < host_y.size(); ++i) merge_gap = std::fmax(merge_gap, std::fabs(host_y[i] - host_target[i]));
  std::printf("loss %.4e -> %.4e; merged vs adapter max |diff| = %.2e\n", double(first_loss), double(loss),
              double(merge_gap));

  const bool ok = std::isfinite(loss) && loss < 0.5f * first_loss && merge_gap < 1e-4f;
  if (!ok) std::printf("cuda_quickstart: the loss did not fall as expected\n");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  cudaStream_t stream = nullptr;
  int status = 1;
  try {
    vc::check(cudaStreamCreate(&stream), "cudaStreamCreate");
    status = train(stream, quick ? 150 : 600);
  } catch (const std::exception& e) {
    std::printf("cuda_quickstart: %s\n", e.what());
  }
  if (stream != nullptr) (void)cudaStreamDestroy(stream);
  return status;
}
