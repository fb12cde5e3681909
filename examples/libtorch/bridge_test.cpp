// SPDX-License-Identifier: Apache-2.0
// VeraLinear against LibTorch's own autograd of the same math: outputs and the gradients of x,
// lambda_b and lambda_d agree; bad tensors get clear errors.
#include <cstdio>
#include <string>

#include "vera_torch.hpp"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// Largest |a - b| relative to the largest |b| (at least 1).
double relative_gap(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = std::max(1.0, b.abs().max().item<double>());
  return (a - b).abs().max().item<double>() / scale;
}

void expect_error(const std::function<void()>& f, const std::string& needle, const std::string& what) {
  try {
    f();
    expect(false, what + ": no error");
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    expect(message.find(needle) != std::string::npos, what + ": message '" + message + "' lacks '" + needle + "'");
  }
}

void check_against_autograd(bool with_bias, int64_t n) {
  torch::manual_seed(11 + n);
  const int64_t in = 20, out = 17, rank = 8;
  const vera::projection<float> shared({3, rank, in, out});
  const torch::Tensor w0 = torch::randn({out, in}) * 0.2;
  const torch::Tensor bias = with_bias ? torch::randn({out}) : torch::Tensor();
  vera_torch::VeraLinear layer(shared, w0, bias);
  {
    torch::NoGradGuard no_grad;
    layer->lambda_b().copy_(torch::randn({out}));
    layer->lambda_d().copy_(torch::randn({rank}));
  }
  const torch::Tensor x = torch::randn({n, in}).requires_grad_();
  const torch::Tensor r = torch::randn({n, out});
  const torch::Tensor y = layer->forward(x);
  (y * r).sum().backward();

  // The same math in torch operations, on copies of the same values.
  const auto a = torch::from_blob(const_cast<float*>(shared.a().data()), {rank, in}).clone();
  const auto b = torch::from_blob(const_cast<float*>(shared.b().data()), {out, rank}).clone();
  const torch::Tensor x_ref = x.detach().clone().requires_grad_();
  const torch::Tensor lb = layer->lambda_b().detach().clone().requires_grad_();
  const torch::Tensor ld = layer->lambda_d().detach().clone().requires_grad_();
  torch::Tensor y_ref = x_ref.matmul(w0.t()) + (x_ref.matmul(a.t()) * ld).matmul(b.t()) * lb;
  if (with_bias) y_ref = y_ref + bias;
  (y_ref * r).sum().backward();

  const std::string where = "bias " + std::to_string(with_bias) + ", n " + std::to_string(n);
  // float32 on both sides, sums of up to 20 products in different orders.
  const double bound = 1e-5;
  expect(relative_gap(y, y_ref) <= bound, "output, " + where);
  expect(relative_gap(x.grad(), x_ref.grad()) <= bound, "grad x, " + where);
  expect(relative_gap(layer->lambda_b().grad(), lb.grad()) <= bound, "grad lambda_b, " + where);
  expect(relative_gap(layer->lambda_d().grad(), ld.grad()) <= bound, "grad lambda_d, " + where);
}

void check_errors() {
  const vera::projection<float> shared({3, 4, 6, 5});
  vera_torch::VeraLinear layer(shared, torch::randn({5, 6}), torch::Tensor());
  expect_error([&] { layer->forward(torch::randn({6, 3}).t()); }, "contiguous", "transposed input");
  expect_error([&] { layer->forward(torch::randn({3, 6}, torch::kFloat64)); }, "float32", "double input");
  expect_error([&] { layer->forward(torch::randn({3, 7})); }, "expected 6 columns", "wrong width");
  expect_error([&] { layer->forward(torch::randn({6})); }, "2 dimensions", "vector input");
  expect_error([&] { vera_torch::VeraLinear(shared, torch::randn({5, 6}), torch::randn({4})); },
               "expected 5 elements", "bias size");

  // Two forwards, then backward through the first: refused, not silently wrong.
  const torch::Tensor x = torch::randn({3, 6}, torch::requires_grad());
  const torch::Tensor first = layer->forward(x);
  const torch::Tensor second = layer->forward(x);
  expect_error([&] { first.sum().backward(); }, "another forward", "stale context");
  second.sum().backward();
  expect(layer->lambda_d().grad().defined(), "backward of the latest forward works");
}

}  // namespace

int main() {
  for (bool with_bias : {false, true}) {
    for (int64_t n : {1, 9, 64}) check_against_autograd(with_bias, n);
  }
  check_errors();
  std::printf("libtorch bridge: %s\n", failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
