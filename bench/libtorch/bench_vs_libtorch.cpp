// SPDX-License-Identifier: Apache-2.0
// vera against LibTorch autograd doing the same VeRA math, and the floor of the GEMMs that math
// needs, in one run: forward, forward+backward (b, d) and (b, d, X), and merge; and a q/k/v block
// of three sibling layers on one input (a vera sibling group against three LibTorch layers).
// vera and the floor run on column-major operands (Eigen's default) and, as vera_row and
// floor_row, on row-major ones (LibTorch's layout). Nothing is timed unless one training step
// of each side gives the same results first (same_math).
//
// Threads are pinned for both sides to OPENBLAS_NUM_THREADS (1 when unset): the BLAS threads of
// both and torch::set_num_threads. Which GEMM each side runs is printed: LibTorch calls the system
// BLAS; vera calls Eigen's own GEMM, or the same BLAS when built with VERA_USE_BLAS
// (EIGEN_USE_BLAS). vera's elementwise passes run on one thread.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <vera/multi.hpp>
#include <vera/vera.hpp>

// OpenBLAS reports the kernel it picked for this CPU; weak, so the program also links without it.
extern "C" {
char* openblas_get_corename() __attribute__((weak));
char* openblas_get_config() __attribute__((weak));
}

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

// `Matrix` is the storage of X, W0, G, Y and grad_X: column-major (Eigen's default), or
// row-major, the layout of LibTorch's tensors.
template <class Matrix>
void vera_case(benchmark::State& state, const shape& s, work what) {
  layer_data d(s);
  const Matrix x = d.x, w0 = d.w0, g = d.g;
  vera::forward_context<float> ctx;
  vera::workspace<float> ws;
  vera::gradients<float> grads(d.ad);
  Matrix y(s.n, s.out), dx(s.n, s.in), w = d.w0;
  for (auto _ : state) {
    switch (what) {
      case work::forward:
        y = vera::forward(x, w0, d.bias, d.ad).using_workspace(ws);
        break;
      case work::train_bd:
      case work::train_bdx:
        y = vera::forward(x, w0, d.bias, d.ad).train(ctx).using_workspace(ws);
        grads = vera::parameter_gradients(g, d.ad, ctx).using_workspace(ws);
        if (what == work::train_bdx) dx = vera::input_gradient(g, w0, d.ad, ctx).using_workspace(ws);
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

// One layer as a group of one trained with a sibling_context: Q = (P Λd) Bᵀ is kept, and one
// backward call gives grad_b, grad_d and grad_X with T = (G Λb) B computed once, as autograd does.
void vera_kept_q_case(benchmark::State& state, const shape& s) {
  layer_data d(s);
  const auto group = vera::siblings(vera::sibling(d.w0, d.bias, d.ad));
  vera::sibling_context<float> ctx;
  vera::workspace<float> ws;
  vera::gradients<float> grads(d.ad);
  matrix y(s.n, s.out), dx(s.n, s.in);
  for (auto _ : state) {
    vera::forward(d.x, group).train(ctx).using_workspace(ws).eval_to(y);
    vera::backward(group, ctx, d.g).using_workspace(ws).eval_to(dx, grads);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
}

torch::Tensor tensor_of(const matrix& m) {
  const row_matrix r = m;
  return torch::from_blob(const_cast<float*>(r.data()), {r.rows(), r.cols()}).clone();
}

// A (rank x in) and B (out x rank) of a projection as LibTorch tensors: copies of the slices.
torch::Tensor a_tensor(const vera::projection<float>& shared, const shape& s) {
  return torch::from_blob(const_cast<float*>(shared.a().data()), {s.rank, shared.max_in()}).narrow(1, 0, s.in).contiguous();
}
torch::Tensor b_tensor(const vera::projection<float>& shared, const shape& s) {
  return torch::from_blob(const_cast<float*>(shared.b().data()), {shared.max_out(), s.rank}).narrow(0, 0, s.out).contiguous();
}

// One layer's operands as LibTorch tensors (copies of layer_data's), and PEFT's VeRA forward
// written with torch operations: y = x W0ᵀ + bias + ((x Aᵀ) * d) Bᵀ * b.
struct torch_layer {
  torch_layer(const layer_data& d, const shape& s)
      : a(a_tensor(d.shared, s)),
        bmat(b_tensor(d.shared, s)),
        x(tensor_of(d.x)),
        w0(tensor_of(d.w0)),
        g(tensor_of(d.g)),
        bias(torch::from_blob(const_cast<float*>(d.bias.data()), {s.out}).clone()),
        lambda_b(torch::from_blob(const_cast<float*>(d.ad.lambda_b().data()), {s.out}).clone()),
        lambda_d(torch::from_blob(const_cast<float*>(d.ad.lambda_d().data()), {s.rank}).clone()) {}

  torch::Tensor forward(const torch::Tensor& x_in) const {
    const auto h = torch::matmul(x_in, a.t()) * lambda_d;
    return torch::addmm(bias, x_in, w0.t()) + torch::matmul(h, bmat.t()) * lambda_b;
  }

  torch::Tensor a, bmat, x, w0, g, bias, lambda_b, lambda_d;
};

void torch_case(benchmark::State& state, const shape& s, work what) {
  layer_data d(s);
  torch::NoGradGuard outer_no_grad;
  torch_layer t(d, s);
  auto w = t.w0.clone();
  const bool grads = what == work::train_bd || what == work::train_bdx;
  t.lambda_b.set_requires_grad(grads);
  t.lambda_d.set_requires_grad(grads);
  auto x_in = t.x.clone().set_requires_grad(what == work::train_bdx);
  for (auto _ : state) {
    if (what == work::merge) {
      w.add_(torch::matmul(t.bmat * t.lambda_b.unsqueeze(1) * t.lambda_d.unsqueeze(0), t.a));
      benchmark::DoNotOptimize(w.data_ptr());
      continue;
    }
    torch::AutoGradMode mode(grads);
    const auto y = t.forward(x_in);
    if (grads) {
      y.backward(t.g);
      benchmark::DoNotOptimize(t.lambda_b.grad().data_ptr());
      t.lambda_b.mutable_grad().reset();
      t.lambda_d.mutable_grad().reset();
      if (what == work::train_bdx) x_in.mutable_grad().reset();
    }
    benchmark::DoNotOptimize(y.data_ptr());
  }
}

// Largest |ours - theirs| over the largest |theirs|; `theirs` is a contiguous float tensor.
template <class Ours>
double relative_gap(const Ours& ours, const torch::Tensor& theirs) {
  const auto t = theirs.contiguous();
  const Eigen::Map<const row_matrix> reference(t.data_ptr<float>(), ours.rows(), ours.cols());
  const double scale = std::max(1e-30, static_cast<double>(reference.cwiseAbs().maxCoeff()));
  return static_cast<double>((ours - reference).cwiseAbs().maxCoeff()) / scale;
}

// One vera training step with X, W0, G, Y and grad_X stored as `Matrix`; returns the relative gaps
// of Y, grad_b, grad_d and grad_X against LibTorch's results for the same layer.
template <class Matrix>
std::array<double, 4> vera_gaps(const layer_data& d, const torch::Tensor& y_ref, const torch_layer& ref,
                                const torch::Tensor& dx_ref) {
  const Matrix x = d.x, w0 = d.w0, g = d.g;
  vera::forward_context<float> ctx;
  vera::gradients<float> grads(d.ad);
  const Matrix y = vera::forward(x, w0, d.bias, d.ad).train(ctx);
  grads = vera::parameter_gradients(g, d.ad, ctx);
  const Matrix dx = vera::input_gradient(g, w0, d.ad, ctx);
  return {relative_gap(y, y_ref), relative_gap(grads.lambda_b.transpose(), ref.lambda_b.grad().unsqueeze(0)),
          relative_gap(grads.lambda_d.transpose(), ref.lambda_d.grad().unsqueeze(0)), relative_gap(dx, dx_ref)};
}

// Before any timing: one training step of vera (column- and row-major) and of LibTorch on the
// shape gives the same Y, grad_b, grad_d and grad_X, so the contenders time the same math.
// Returns false, after saying where, when a gap exceeds float32's rounding over these sums.
bool same_math(const shape& s) {
  const layer_data d(s);
  torch_layer t(d, s);
  t.lambda_b.set_requires_grad(true);
  t.lambda_d.set_requires_grad(true);
  const auto x_in = t.x.clone().set_requires_grad(true);
  const auto y_out = t.forward(x_in);
  y_out.backward(t.g);
  const auto y_torch = y_out.detach();

  constexpr double limit = 1e-4;
  bool agree = true;
  const std::pair<const char*, std::array<double, 4>> layouts[] = {
      {"col-major", vera_gaps<matrix>(d, y_torch, t, x_in.grad())},
      {"row-major", vera_gaps<row_matrix>(d, y_torch, t, x_in.grad())}};
  for (const auto& [layout, gaps] : layouts) {
    const double worst = *std::max_element(gaps.begin(), gaps.end());
    std::printf("check %-14s %-9s vera vs libtorch, relative gap: Y %.1e, grad_b %.1e, grad_d %.1e, grad_X %.1e%s\n",
                s.name, layout, gaps[0], gaps[1], gaps[2], gaps[3], worst <= limit ? "" : "  <-- over 1e-4");
    agree = agree && worst <= limit;
  }
  return agree;
}

// The GEMMs the math needs, alone, with vera's GEMM (Eigen, or BLAS under VERA_USE_BLAS):
// forward: X W0ᵀ, X Aᵀ, P Bbdᵀ; + backward (b, d): Gᵀ P (or keep Q = P Bbdᵀ); + X: G W0, G Bbd,
// (G Bbd) A; merge: Bbd A. Elementwise work is left out: this is a lower bound.
// `Matrix` as in vera_case: the storage of X, W0, G, Y, grad_X, and here of P, T and M too.
template <class Matrix>
void floor_case(benchmark::State& state, const shape& s, work what) {
  layer_data d(s);
  const row_matrix a = d.shared.a().topLeftCorner(s.rank, s.in);
  const matrix bbd = matrix::Random(s.out, s.rank);
  const Matrix x = d.x, w0 = d.w0, g = d.g;
  Matrix y(s.n, s.out), p(s.n, s.rank), m(s.out, s.rank), t(s.n, s.rank), dx(s.n, s.in), w = d.w0;
  for (auto _ : state) {
    if (what == work::merge) {
      w.noalias() += bbd * a;
      benchmark::DoNotOptimize(w.data());
      continue;
    }
    y.noalias() = x * w0.transpose();
    p.noalias() = x * a.transpose();
    y.noalias() += p * bbd.transpose();
    if (what != work::forward) m.noalias() = g.transpose() * p;
    if (what == work::train_bdx) {
      dx.noalias() = g * w0;
      t.noalias() = g * bbd;
      dx.noalias() += t * a;
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(m.data());
    benchmark::DoNotOptimize(dx.data());
  }
}

// q/k/v: three sibling layers (in x out each) that read the same X and share one projection.
const shape qkv_shapes[] = {{"roberta_qkv_r1024", 512, 768, 768, 1024}, {"roberta_qkv_r256", 512, 768, 768, 256}};
constexpr int siblings = 3;

struct qkv_data {
  explicit qkv_data(const shape& s) : shared({7, s.rank, s.in, s.out}), x(matrix::Random(s.n, s.in)) {
    layers.reserve(siblings);  // the group points at these adapters: no reallocation after this
    for (int i = 0; i < siblings; ++i) {
      vera::adapter_options o = layer_data::random_init();
      o.init_seed = static_cast<std::uint64_t>(i);
      layers.emplace_back(shared, s.in, s.out, o);
      w0[i] = matrix::Random(s.out, s.in) * 0.05f;
      bias[i] = Eigen::VectorXf::Random(s.out);
      g[i] = matrix::Random(s.n, s.out);
    }
  }
  vera::projection<float> shared;
  std::vector<vera::adapter<float>> layers;
  matrix x;
  std::array<matrix, siblings> w0, g;
  std::array<Eigen::VectorXf, siblings> bias;
};

// The sibling group: P = X Aᵀ once, grad_X's adapter terms in one GEMM against A.
void vera_qkv_case(benchmark::State& state, const shape& s) {
  qkv_data d(s);
  const auto group = vera::siblings(vera::sibling(d.w0[0], d.bias[0], d.layers[0]),
                                    vera::sibling(d.w0[1], d.bias[1], d.layers[1]),
                                    vera::sibling(d.w0[2], d.bias[2], d.layers[2]));
  vera::forward_context<float> ctx;
  vera::workspace<float> ws;
  vera::gradients<float> gq(d.layers[0]), gk(d.layers[1]), gv(d.layers[2]);
  matrix yq(s.n, s.out), yk(s.n, s.out), yv(s.n, s.out), dx(s.n, s.in);
  for (auto _ : state) {
    vera::forward(d.x, group).train(ctx).using_workspace(ws).eval_to(yq, yk, yv);
    vera::parameter_gradients(group, ctx, d.g[0], d.g[1], d.g[2]).using_workspace(ws).eval_to(gq, gk, gv);
    dx = vera::input_gradient(group, ctx, d.g[0], d.g[1], d.g[2]).using_workspace(ws);
    benchmark::DoNotOptimize(yv.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
}

// The sibling group with a context that keeps Q_i: the one-pass backward, no G_iᵀ P GEMMs.
void vera_qkv_kept_case(benchmark::State& state, const shape& s) {
  qkv_data d(s);
  const auto group = vera::siblings(vera::sibling(d.w0[0], d.bias[0], d.layers[0]),
                                    vera::sibling(d.w0[1], d.bias[1], d.layers[1]),
                                    vera::sibling(d.w0[2], d.bias[2], d.layers[2]));
  vera::sibling_context<float> ctx;
  vera::workspace<float> ws;
  vera::gradients<float> gq(d.layers[0]), gk(d.layers[1]), gv(d.layers[2]);
  matrix yq(s.n, s.out), yk(s.n, s.out), yv(s.n, s.out), dx(s.n, s.in);
  for (auto _ : state) {
    vera::forward(d.x, group).train(ctx).using_workspace(ws).eval_to(yq, yk, yv);
    vera::backward(group, ctx, d.g[0], d.g[1], d.g[2]).using_workspace(ws).eval_to(dx, gq, gk, gv);
    benchmark::DoNotOptimize(yv.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
}

// The same three layers through the single-adapter API: nothing shared.
void vera_separate_qkv_case(benchmark::State& state, const shape& s) {
  qkv_data d(s);
  std::array<vera::forward_context<float>, siblings> ctx;
  vera::workspace<float> ws;
  std::array<vera::gradients<float>, siblings> grads;
  std::array<matrix, siblings> y;
  matrix dx(s.n, s.in);
  for (auto _ : state) {
    for (int i = 0; i < siblings; ++i) {
      y[i] = vera::forward(d.x, d.w0[i], d.bias[i], d.layers[i]).train(ctx[i]).using_workspace(ws);
    }
    for (int i = 0; i < siblings; ++i) {
      grads[i] = vera::parameter_gradients(d.g[i], d.layers[i], ctx[i]).using_workspace(ws);
      const auto term = vera::input_gradient(d.g[i], d.w0[i], d.layers[i], ctx[i]).using_workspace(ws);
      if (i == 0) {
        dx = term;
      } else {
        term.add_to(dx);
      }
    }
    benchmark::DoNotOptimize(y[2].data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
}

// Three PEFT VeRA layers on one input, as a model holds them: each computes its own x Aᵀ;
// autograd sums the three contributions to grad x.
void torch_qkv_case(benchmark::State& state, const shape& s) {
  qkv_data d(s);
  torch::NoGradGuard outer_no_grad;
  const auto a = a_tensor(d.shared, s);
  const auto bmat = b_tensor(d.shared, s);
  auto x_in = tensor_of(d.x).set_requires_grad(true);
  std::vector<torch::Tensor> w0, bias, g, lambda_b, lambda_d;
  for (int i = 0; i < siblings; ++i) {
    const auto& ad = d.layers[static_cast<std::size_t>(i)];
    w0.push_back(tensor_of(d.w0[i]));
    bias.push_back(torch::from_blob(d.bias[i].data(), {s.out}).clone());
    g.push_back(tensor_of(d.g[i]));
    lambda_b.push_back(torch::from_blob(const_cast<float*>(ad.lambda_b().data()), {s.out}).clone().set_requires_grad(true));
    lambda_d.push_back(torch::from_blob(const_cast<float*>(ad.lambda_d().data()), {s.rank}).clone().set_requires_grad(true));
  }
  for (auto _ : state) {
    torch::AutoGradMode mode(true);
    std::vector<torch::Tensor> y;
    for (int i = 0; i < siblings; ++i) {
      const auto h = torch::matmul(x_in, a.t()) * lambda_d[i];
      y.push_back(torch::addmm(bias[i], x_in, w0[i].t()) + torch::matmul(h, bmat.t()) * lambda_b[i]);
    }
    torch::autograd::backward(y, g);
    benchmark::DoNotOptimize(x_in.grad().data_ptr());
    for (int i = 0; i < siblings; ++i) {
      lambda_b[i].mutable_grad().reset();
      lambda_d[i].mutable_grad().reset();
    }
    x_in.mutable_grad().reset();
  }
}

// The GEMMs of the shared math alone: Y_i = X W_iᵀ, P = X Aᵀ once, Y_i += P Bbd_iᵀ;
// dX = Σ G_i W_i, S = Σ G_i Bbd_i, dX += S A once; that is the minimum (grad_b from a kept Q,
// grad_d from G_i Bbd_i). `with_m` adds M_i = G_iᵀ P, which a backward from P alone needs.
void floor_qkv_case(benchmark::State& state, const shape& s, bool with_m) {
  qkv_data d(s);
  const row_matrix a = d.shared.a().topLeftCorner(s.rank, s.in);
  std::array<matrix, siblings> bbd, y, m;
  for (int i = 0; i < siblings; ++i) {
    bbd[i] = matrix::Random(s.out, s.rank);
    y[i].resize(s.n, s.out);
    m[i].resize(s.out, s.rank);
  }
  matrix p(s.n, s.rank), t(s.n, s.rank), dx(s.n, s.in);
  for (auto _ : state) {
    p.noalias() = d.x * a.transpose();
    for (int i = 0; i < siblings; ++i) {
      y[i].noalias() = d.x * d.w0[i].transpose();
      y[i].noalias() += p * bbd[i].transpose();
    }
    for (int i = 0; i < siblings; ++i) {
      if (with_m) m[i].noalias() = d.g[i].transpose() * p;
      if (i == 0) {
        dx.noalias() = d.g[i] * d.w0[i];
        t.noalias() = d.g[i] * bbd[i];
      } else {
        dx.noalias() += d.g[i] * d.w0[i];
        t.noalias() += d.g[i] * bbd[i];
      }
    }
    dx.noalias() += t * a;
    benchmark::DoNotOptimize(y[2].data());
    benchmark::DoNotOptimize(m[2].data());
    benchmark::DoNotOptimize(dx.data());
  }
}

// VeRA against LoRA on a Llama-like q+v block (4096 x 4096 each, n = 512): VeRA r = 256 as a
// sibling group (one-pass backward), LoRA r = 32 with lora_alpha = 8 (PEFT's usual settings),
// both on vera's GEMM (Eigen, or BLAS under VERA_USE_BLAS) and the same threads. One training
// step: forward, then the trained parameters' gradients and grad_X.
const shape qv_vera_shape{"llama_qv_4096", 512, 4096, 4096, 256};
constexpr Eigen::Index lora_rank = 32;
constexpr float lora_scale = 8.0f / static_cast<float>(lora_rank);

struct qv_data {
  explicit qv_data(const shape& s) : x(matrix::Random(s.n, s.in)) {
    for (int i = 0; i < 2; ++i) {
      w0[i] = matrix::Random(s.out, s.in) * 0.05f;
      bias[i] = Eigen::VectorXf::Random(s.out);
      g[i] = matrix::Random(s.n, s.out);
    }
  }
  matrix x;
  std::array<matrix, 2> w0, g;
  std::array<Eigen::VectorXf, 2> bias;
};

void vera_qv_case(benchmark::State& state, const shape& s) {
  qv_data d(s);
  const vera::projection<float> shared({7, s.rank, s.in, s.out});
  const vera::adapter<float> q(shared, s.in, s.out, layer_data::random_init());
  const vera::adapter<float> v(shared, s.in, s.out, layer_data::random_init());
  const auto group = vera::siblings(vera::sibling(d.w0[0], d.bias[0], q), vera::sibling(d.w0[1], d.bias[1], v));
  vera::sibling_context<float> ctx;
  vera::workspace<float> ws;
  vera::gradients<float> gq(q), gv(v);
  matrix yq(s.n, s.out), yv(s.n, s.out), dx(s.n, s.in);
  for (auto _ : state) {
    vera::forward(d.x, group).train(ctx).using_workspace(ws).eval_to(yq, yv);
    vera::backward(group, ctx, d.g[0], d.g[1]).using_workspace(ws).eval_to(dx, gq, gv);
    benchmark::DoNotOptimize(yv.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
}

// LoRA's step written with the same GEMMs: H_i = X A_iᵀ, Y_i = X W_iᵀ + bias_i + s H_i B_iᵀ;
// grad B_i = s G_iᵀ H_i, T_i = s G_i B_i, grad A_i = T_iᵀ X, dX = Σ G_i W_i + Σ T_i A_i.
void lora_qv_case(benchmark::State& state, const shape& s) {
  qv_data d(s);
  std::array<matrix, 2> a, b, h, t, grad_a, grad_b, y;
  for (int i = 0; i < 2; ++i) {
    a[i] = matrix::Random(lora_rank, s.in) * 0.05f;
    b[i] = matrix::Random(s.out, lora_rank) * 0.05f;
    h[i].resize(s.n, lora_rank);
    t[i].resize(s.n, lora_rank);
    grad_a[i].resize(lora_rank, s.in);
    grad_b[i].resize(s.out, lora_rank);
    y[i].resize(s.n, s.out);
  }
  matrix dx(s.n, s.in);
  for (auto _ : state) {
    for (int i = 0; i < 2; ++i) {
      h[i].noalias() = d.x * a[i].transpose();
      y[i].rowwise() = d.bias[i].transpose();
      y[i].noalias() += d.x * d.w0[i].transpose();
      y[i].noalias() += lora_scale * (h[i] * b[i].transpose());
    }
    for (int i = 0; i < 2; ++i) {
      grad_b[i].noalias() = lora_scale * (d.g[i].transpose() * h[i]);
      t[i].noalias() = lora_scale * (d.g[i] * b[i]);
      grad_a[i].noalias() = t[i].transpose() * d.x;
      if (i == 0) {
        dx.noalias() = d.g[i] * d.w0[i];
      } else {
        dx.noalias() += d.g[i] * d.w0[i];
      }
      dx.noalias() += t[i] * a[i];
    }
    benchmark::DoNotOptimize(y[1].data());
    benchmark::DoNotOptimize(grad_a[1].data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
}

// With several threads the benchmark thread's CPU time misses the BLAS and OpenMP workers, so
// iterations are then timed (and reported) on the wall clock.
bool wall_clock = false;
void timing(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMillisecond);
  if (wall_clock) b->UseRealTime();
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
  const char* blas_threads = std::getenv("OPENBLAS_NUM_THREADS");
  const int threads = blas_threads != nullptr && std::atoi(blas_threads) > 0 ? std::atoi(blas_threads) : 1;
  torch::set_num_threads(threads);
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("CPU: %s\nLibTorch %s, %d intra-op thread(s), system BLAS (OpenBLAS: "
              "OPENBLAS_NUM_THREADS=%s, OPENBLAS_CORETYPE=%s, OMP_WAIT_POLICY=%s)\nvera GEMM: %s\n",
              cpu_model().c_str(), TORCH_VERSION, torch::get_num_threads(),
              blas_threads ? blas_threads : "unset", coretype ? coretype : "unset (auto)",
              wait_policy ? wait_policy : "unset",
#ifdef EIGEN_USE_BLAS
              "the same BLAS (EIGEN_USE_BLAS)"
#else
              "Eigen's own"
#endif
  );
  wall_clock = threads > 1;
  std::printf("BLAS kernel: %s (%s)\n", openblas_get_corename ? openblas_get_corename() : "unknown (not OpenBLAS)",
              openblas_get_config ? openblas_get_config() : "-");
  bool agree = true;
  for (const auto& s : shapes) agree = same_math(s) && agree;
  if (!agree) {
    std::fprintf(stderr, "bench_vs_libtorch: vera and LibTorch disagree (above); not timing\n");
    return 1;
  }
  const std::pair<work, const char*> works[] = {{work::forward, "forward"},
                                                {work::train_bd, "train_bd"},
                                                {work::train_bdx, "train_bdx"},
                                                {work::merge, "merge"}};
  for (const auto& s : shapes) {
    for (const auto& [what, label] : works) {
      if (what == work::merge && s.n != 512) continue;  // merge does not depend on n
      const std::string suffix = std::string(label) + "/" + s.name;
      benchmark::RegisterBenchmark(("vera/" + suffix).c_str(), vera_case<matrix>, s, what)->Apply(timing);
      benchmark::RegisterBenchmark(("vera_row/" + suffix).c_str(), vera_case<row_matrix>, s, what)->Apply(timing);
      benchmark::RegisterBenchmark(("libtorch/" + suffix).c_str(), torch_case, s, what)->Apply(timing);
      benchmark::RegisterBenchmark(("floor/" + suffix).c_str(), floor_case<matrix>, s, what)->Apply(timing);
      benchmark::RegisterBenchmark(("floor_row/" + suffix).c_str(), floor_case<row_matrix>, s, what)->Apply(timing);
      if (what == work::train_bdx) {
        benchmark::RegisterBenchmark(("vera_kept_q/" + suffix).c_str(), vera_kept_q_case, s)->Apply(timing);
      }
    }
  }
  for (const auto& s : qkv_shapes) {
    const std::string suffix = std::string("qkv_train_bdx/") + s.name;
    benchmark::RegisterBenchmark(("vera_group/" + suffix).c_str(), vera_qkv_case, s)->Apply(timing);
    benchmark::RegisterBenchmark(("vera_group_kept_q/" + suffix).c_str(), vera_qkv_kept_case, s)->Apply(timing);
    benchmark::RegisterBenchmark(("vera_separate/" + suffix).c_str(), vera_separate_qkv_case, s)->Apply(timing);
    benchmark::RegisterBenchmark(("libtorch/" + suffix).c_str(), torch_qkv_case, s)->Apply(timing);
    benchmark::RegisterBenchmark(("floor/" + suffix).c_str(), floor_qkv_case, s, false)->Apply(timing);
    benchmark::RegisterBenchmark(("floor_with_m/" + suffix).c_str(), floor_qkv_case, s, true)->Apply(timing);
  }
  benchmark::RegisterBenchmark("vera_group_kept_q/qv_train/llama_qv_4096_r256", vera_qv_case, qv_vera_shape)
      ->Apply(timing);
  benchmark::RegisterBenchmark("lora/qv_train/llama_qv_4096_r32", lora_qv_case, qv_vera_shape)
      ->Apply(timing);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
