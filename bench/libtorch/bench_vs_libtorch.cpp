// SPDX-License-Identifier: Apache-2.0
// vera against LibTorch autograd doing the same VeRA math, and the floor of the GEMMs that math
// needs, in one run: forward, forward+backward (b, d) and (b, d, X), and merge.
//
// Threads are pinned for both sides: torch::set_num_threads(1) and one BLAS thread (set
// OPENBLAS_NUM_THREADS=1). Which GEMM each side runs is printed: LibTorch calls the system BLAS;
// vera calls Eigen's own GEMM, or the same BLAS when built with VERA_USE_BLAS (EIGEN_USE_BLAS).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include <vera/vera.hpp>

namespace {

using matrix = Eigen::MatrixXf;
using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct shape {
  const char* name;
  Eigen::Index n, in, out, rank;
};
// RoBERTa-base-like at two ranks, a wider layer, a Llama-like layer, and latency shapes.
const shape shapes[] = {
    {"roberta_r1024", 512, 768, 768, 1024}, {"roberta_r256", 512, 768, 768, 256},
    {"wide_768x3072", 512, 768, 3072, 256}, {"llama_4096", 512, 4096, 4096, 256},
    {"latency_n16", 16, 768, 768, 256},     {"latency_n1", 1, 768, 768, 256},
};

enum class work { forward, train_bd, train_bdx, merge };

// One layer's operands, shared by the three contenders so they see identical data.
struct layer_data {
  explicit layer_data(const shape& s)
      : shared({7, s.rank, s.in, s.out}),
        ad(shared, s.in, s.out, random_init()),
        x(matrix::Random(s.n, s.in)),
        w0(matrix::Random(s.out, s.in) * 0.05f),
        bias(Eigen::VectorXf::Random(s.out)),
        g(matrix::Random(s.n, s.out)) {}
  static vera::adapter_options random_init() {
    vera::adapter_options o;
    o.init = vera::init_kind::random;
    return o;
  }
  vera::projection<float> shared;
  vera::adapter<float> ad;
  matrix x, w0;
  Eigen::VectorXf bias;
  matrix g;
};

void vera_case(benchmark::State& state, const shape& s, work what) {
  layer_data d(s);
  vera::forward_context<float> ctx;
  vera::workspace<float> ws;
  vera::gradients<float> grads(d.ad);
  matrix y(s.n, s.out), dx(s.n, s.in), w = d.w0;
  for (auto _ : state) {
    switch (what) {
      case work::forward:
        y = vera::forward(d.x, d.w0, d.bias, d.ad).using_workspace(ws);
        break;
      case work::train_bd:
      case work::train_bdx:
        y = vera::forward(d.x, d.w0, d.bias, d.ad).train(ctx).using_workspace(ws);
        grads = vera::parameter_gradients(d.g, d.ad, ctx).using_workspace(ws);
        if (what == work::train_bdx) dx = vera::input_gradient(d.g, d.w0, d.ad, ctx).using_workspace(ws);
        break;
      case work::merge:
        vera::merge(w, d.ad, &ws);
        break;
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
}

torch::Tensor tensor_of(const matrix& m) {
  const row_matrix r = m;
  return torch::from_blob(const_cast<float*>(r.data()), {r.rows(), r.cols()}).clone();
}

// PEFT's VeRA forward, written with torch operations: y = x W0ᵀ + bias + ((x Aᵀ) * d) Bᵀ * b.
void torch_case(benchmark::State& state, const shape& s, work what) {
  layer_data d(s);
  torch::NoGradGuard outer_no_grad;
  const auto a = torch::from_blob(const_cast<float*>(d.shared.a().data()), {s.rank, d.shared.max_in()})
                     .narrow(1, 0, s.in).contiguous();
  const auto b_full = torch::from_blob(const_cast<float*>(d.shared.b().data()), {d.shared.max_out(), s.rank});
  const auto bmat = b_full.narrow(0, 0, s.out).contiguous();
  const auto x = tensor_of(d.x), w0 = tensor_of(d.w0), g = tensor_of(d.g);
  const auto bias = torch::from_blob(d.bias.data(), {s.out}).clone();
  auto lambda_b = torch::from_blob(const_cast<float*>(d.ad.lambda_b().data()), {s.out}).clone();
  auto lambda_d = torch::from_blob(const_cast<float*>(d.ad.lambda_d().data()), {s.rank}).clone();
  auto w = w0.clone();
  const bool grads = what == work::train_bd || what == work::train_bdx;
  lambda_b.set_requires_grad(grads);
  lambda_d.set_requires_grad(grads);
  auto x_in = x.clone().set_requires_grad(what == work::train_bdx);
  for (auto _ : state) {
    if (what == work::merge) {
      w.add_(torch::matmul(bmat * lambda_b.unsqueeze(1) * lambda_d.unsqueeze(0), a));
      benchmark::DoNotOptimize(w.data_ptr());
      continue;
    }
    torch::AutoGradMode mode(grads);
    const auto h = torch::matmul(x_in, a.t()) * lambda_d;
    const auto y = torch::addmm(bias, x_in, w0.t()) + torch::matmul(h, bmat.t()) * lambda_b;
    if (grads) {
      y.backward(g);
      benchmark::DoNotOptimize(lambda_b.grad().data_ptr());
      lambda_b.mutable_grad().reset();
      lambda_d.mutable_grad().reset();
      if (what == work::train_bdx) x_in.mutable_grad().reset();
    }
    benchmark::DoNotOptimize(y.data_ptr());
  }
}

// The GEMMs the math needs, alone, with vera's GEMM (Eigen, or BLAS under VERA_USE_BLAS):
// forward: X W0ᵀ, X Aᵀ, P Bbdᵀ; + backward (b, d): Gᵀ P (or keep Q = P Bbdᵀ); + X: G W0, G Bbd,
// (G Bbd) A; merge: Bbd A. Elementwise work is left out: this is a lower bound.
void floor_case(benchmark::State& state, const shape& s, work what) {
  layer_data d(s);
  const row_matrix a = d.shared.a().topLeftCorner(s.rank, s.in);
  const matrix bbd = matrix::Random(s.out, s.rank);
  matrix y(s.n, s.out), p(s.n, s.rank), q(s.n, s.out), m(s.out, s.rank), t(s.n, s.rank),
      dx(s.n, s.in), w = d.w0;
  for (auto _ : state) {
    if (what == work::merge) {
      w.noalias() += bbd * a;
      benchmark::DoNotOptimize(w.data());
      continue;
    }
    y.noalias() = d.x * d.w0.transpose();
    p.noalias() = d.x * a.transpose();
    y.noalias() += p * bbd.transpose();
    if (what != work::forward) m.noalias() = d.g.transpose() * p;
    if (what == work::train_bdx) {
      dx.noalias() = d.g * d.w0;
      t.noalias() = d.g * bbd;
      dx.noalias() += t * a;
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(m.data());
    benchmark::DoNotOptimize(dx.data());
  }
}

std::string cpu_model() {
  std::ifstream info("/proc/cpuinfo");
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  const char* blas_threads = std::getenv("OPENBLAS_NUM_THREADS");
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("CPU: %s\nLibTorch %s, %d intra-op thread(s), system BLAS (OpenBLAS: "
              "OPENBLAS_NUM_THREADS=%s, OPENBLAS_CORETYPE=%s)\nvera GEMM: %s\n",
              cpu_model().c_str(), TORCH_VERSION, torch::get_num_threads(),
              blas_threads ? blas_threads : "unset", coretype ? coretype : "unset (auto)",
#ifdef EIGEN_USE_BLAS
              "the same BLAS (EIGEN_USE_BLAS)"
#else
              "Eigen's own"
#endif
  );
  const std::pair<work, const char*> works[] = {{work::forward, "forward"},
                                                {work::train_bd, "train_bd"},
                                                {work::train_bdx, "train_bdx"},
                                                {work::merge, "merge"}};
  for (const auto& s : shapes) {
    for (const auto& [what, label] : works) {
      if (what == work::merge && s.n != 512) continue;  // merge does not depend on n
      const std::string suffix = std::string(label) + "/" + s.name;
      benchmark::RegisterBenchmark(("vera/" + suffix).c_str(), vera_case, s, what)->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("libtorch/" + suffix).c_str(), torch_case, s, what)->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("floor/" + suffix).c_str(), floor_case, s, what)->Unit(benchmark::kMillisecond);
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
