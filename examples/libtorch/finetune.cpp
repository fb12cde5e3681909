// SPDX-License-Identifier: Apache-2.0
// Fine-tunes a small torch::nn model through VeraLinear layers with a torch optimizer: only the
// VeRA vectors train, the frozen base weights never change, and the loss falls.
#include <cstdio>
#include <cstring>

#include "vera_torch.hpp"

namespace {

// A frozen two-layer network with VeRA on both layers, sharing one projection.
struct NetImpl : torch::nn::Module {
  NetImpl(const vera::projection<float>& shared, const torch::Tensor& w1, const torch::Tensor& w2)
      : fc1(register_module("fc1", vera_torch::VeraLinear(shared, w1, torch::zeros({w1.size(0)})))),
        fc2(register_module("fc2", vera_torch::VeraLinear(shared, w2, torch::Tensor()))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2->forward(torch::tanh(fc1->forward(x))); }
  vera_torch::VeraLinear fc1, fc2;
};
TORCH_MODULE(Net);

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  torch::manual_seed(0);
  const int64_t in = 48, hidden = 64, out = 16, rank = 32, batch = 256;
  const vera::projection<float> shared({/*seed=*/0, rank, /*max_in=*/hidden, /*max_out=*/hidden});
  const torch::Tensor w1 = torch::randn({hidden, in}) * 0.15, w2 = torch::randn({out, hidden}) * 0.12;
  Net net(shared, w1, w2);
  // The target: the same frozen network with adapters at random b and d, an update of exactly
  // the form VeRA can learn.
  Net teacher(shared, w1, w2);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : teacher->parameters()) p.copy_(torch::randn(p.sizes()) * 0.5);
  }
  const torch::Tensor w1_before = net->fc1->named_buffers()["weight"].clone();

  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(2e-2));
  const int steps = quick ? 150 : 600;
  double first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    const torch::Tensor x = torch::randn({batch, in});
    torch::Tensor target;
    {
      torch::NoGradGuard no_grad;
      target = teacher->forward(x);
    }
    const torch::Tensor loss = torch::mse_loss(net->forward(x), target);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
    if (step % (steps / 6) == 0 || step == steps - 1) std::printf("step %4d  loss %.3e\n", step, last);
  }
  int64_t trained = 0;
  for (const auto& p : net->parameters()) trained += p.numel();
  const bool frozen = torch::equal(net->fc1->named_buffers()["weight"], w1_before);
  std::printf("trained %lld parameters (the VeRA vectors) of a %lld-weight network; base weights "
              "unchanged: %s; loss %.3e -> %.3e\n",
              static_cast<long long>(trained), static_cast<long long>(w1.numel() + w2.numel()),
              frozen ? "yes" : "NO", first, last);
  return frozen && last < 0.5 * first ? 0 : 1;
}
