// SPDX-License-Identifier: Apache-2.0
// Memory a training forward keeps for backward, per row of the batch: vera's forward_context
// against what LibTorch autograd saves for the same VeRA math (PEFT's formulation).
//
// Measured, not counted: the heap in use (glibc mallinfo2: arena plus mmapped blocks) after a
// training forward whose output is kept, minus the heap before it and minus the output itself.
// Inputs, weights and the projection exist before the measurement starts, so what autograd keeps
// by reference (the input X) is not counted for either side; both sides ran the same shapes
// once beforehand so that one-off allocations (workspaces, thread pools) are not counted either.
#include <malloc.h>
#include <torch/torch.h>

#include <cstdio>

#include <vera/vera.hpp>

namespace {

using matrix = Eigen::MatrixXf;
using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct shape {
  const char* name;
  Eigen::Index n, in, out, rank;
};
const shape shapes[] = {
    {"roberta_r1024", 512, 768, 768, 1024},
    {"roberta_r256", 512, 768, 768, 256},
    {"wide_768x3072", 512, 768, 3072, 256},
    {"llama_4096", 512, 4096, 4096, 256},
};

long long heap_in_use() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<long long>(info.uordblks + info.hblkhd);
}

torch::Tensor tensor_of(const matrix& m) {
  const row_matrix r = m;
  return torch::from_blob(const_cast<float*>(r.data()), {r.rows(), r.cols()}).clone();
}

struct layer {
  explicit layer(const shape& s)
      : shared({7, s.rank, s.in, s.out}),
        ad(shared, s.in, s.out),
        x(matrix::Random(s.n, s.in)),
        w0(matrix::Random(s.out, s.in) * 0.05f),
        bias(Eigen::VectorXf::Random(s.out)) {}
  vera::projection<float> shared;
  vera::adapter<float> ad;
  matrix x, w0;
  Eigen::VectorXf bias;
};

// Bytes a vera training forward keeps: the context (P = X Aᵀ, n x rank).
long long vera_saved(const shape& s, layer& l) {
  vera::workspace<float> ws;
  matrix y(s.n, s.out);
  {
    vera::forward_context<float> warm;
    y = vera::forward(l.x, l.w0, l.bias, l.ad).train(warm).using_workspace(ws);
  }
  const long long before = heap_in_use();
  vera::forward_context<float> ctx;
  y = vera::forward(l.x, l.w0, l.bias, l.ad).train(ctx).using_workspace(ws);
  return heap_in_use() - before;
}

// Bytes LibTorch autograd keeps after y = x W0ᵀ + bias + ((x Aᵀ) * d) Bᵀ * b, with b and d (and
// x when `input_grad`) requiring gradients, minus the output y.
long long torch_saved(const shape& s, layer& l, bool input_grad) {
  const auto a = tensor_of(l.shared.a().leftCols(s.in));
  const auto bmat = tensor_of(l.shared.b().topRows(s.out));
  const auto w0 = tensor_of(l.w0);
  const auto bias = torch::from_blob(l.bias.data(), {s.out}).clone();
  const auto x = tensor_of(l.x).set_requires_grad(input_grad);
  const auto lambda_b = torch::zeros({s.out}).set_requires_grad(true);
  const auto lambda_d = torch::full({s.rank}, 0.1f).set_requires_grad(true);
  const auto run = [&] {
    const auto h = torch::matmul(x, a.t()) * lambda_d;
    return torch::addmm(bias, x, w0.t()) + torch::matmul(h, bmat.t()) * lambda_b;
  };
  { const auto warm = run(); }
  const long long before = heap_in_use();
  const auto y = run();
  const long long kept = heap_in_use() - before;
  return kept - static_cast<long long>(y.numel() * y.element_size());
}

}  // namespace

int main() {
  torch::set_num_threads(1);
  std::printf("# bytes kept for backward per row of the batch (float32), measured as heap growth\n");
  std::printf("| case | n | vera context | LibTorch, grads of b, d | LibTorch, grads of b, d, X | "
              "LibTorch / vera (b, d, X) |\n|---|---|---|---|---|---|\n");
  for (const shape& s : shapes) {
    layer l(s);
    const double rows = static_cast<double>(s.n);
    const double vera_row = static_cast<double>(vera_saved(s, l)) / rows;
    const double torch_bd = static_cast<double>(torch_saved(s, l, false)) / rows;
    const double torch_bdx = static_cast<double>(torch_saved(s, l, true)) / rows;
    std::printf("| %s (%lldx%lld, r=%lld) | %lld | %.0f B | %.0f B | %.0f B | %.2fx |\n", s.name,
                static_cast<long long>(s.out), static_cast<long long>(s.in),
                static_cast<long long>(s.rank), static_cast<long long>(s.n), vera_row, torch_bd,
                torch_bdx, torch_bdx / vera_row);
  }
  return 0;
}
