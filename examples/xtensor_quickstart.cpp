// SPDX-License-Identifier: Apache-2.0
// xtensor quickstart: train b and d of a frozen two-layer network held in xtensor containers.
//
// The same task as quickstart.cpp, written the way an xtensor user would: weights, activations
// and gradients are xt::xtensor, the activation between the layers is an xtensor expression
// handed straight to vera (evaluated once), and b and d are updated through xtensor views of the
// adapters' storage.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include <xtensor/xmath.hpp>
#include <xtensor/xrandom.hpp>
#include <xtensor/xview.hpp>

#include <vera/xtensor.hpp>

namespace {

using matrix = vera::xt::matrix<float>;

matrix random_matrix(std::size_t rows, std::size_t cols, float scale) {
  return xt::random::randn<float>({rows, cols}, 0.0f, scale);
}

// X Wᵀ for the frozen layers alone, as an xtensor expression (xtensor has no GEMM of its own).
template <class X>
matrix base_layer(const X& x, const matrix& w) {
  return xt::sum(xt::view(x, xt::all(), xt::newaxis(), xt::all()) * w, {2});
}

// An adapter with random lambdas (b = 1, d ~ N(0, 1) from `seed`), b then scaled to 0.3.
vera::adapter<float> target_adapter(const vera::projection<float>& shared, std::size_t in,
                                    std::size_t out, std::uint64_t seed) {
  vera::adapter_options options;
  options.init = vera::init_kind::random;
  options.init_seed = seed;
  vera::adapter<float> ad(shared, vera::index(in), vera::index(out), options);
  vera::xt::lambda_b(ad) *= 0.3f;
  return ad;
}

// Momentum SGD on one adapter's b and d, updated in place through xtensor views of its storage.
struct layer_optimizer {
  float lr;
  float beta;
  vera::xt::vector<float> velocity_b;
  vera::xt::vector<float> velocity_d;

  layer_optimizer(const vera::adapter<float>& ad, float learning_rate, float momentum)
      : lr(learning_rate), beta(momentum),
        velocity_b(xt::zeros<float>({std::size_t(ad.out_features())})),
        velocity_d(xt::zeros<float>({std::size_t(ad.rank())})) {}

  void step(vera::adapter<float>& ad, const vera::xt::gradients<float>& grads) {
    velocity_b = beta * velocity_b + grads.lambda_b();
    velocity_d = beta * velocity_d + grads.lambda_d();
    vera::xt::lambda_b(ad) -= lr * velocity_b;
    vera::xt::lambda_d(ad) -= lr * velocity_d;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int steps = quick ? 150 : 600;
  const std::size_t in = 64, hidden = 96, out = 32, rank = 48, batch = 128;
  xt::random::seed(7);

  // One projection shared by both layers, sized by the largest in/out among them (as in PEFT).
  const vera::projection<float> shared({/*seed=*/0, rank, /*max_in=*/hidden, /*max_out=*/hidden});
  vera::adapter<float> ad1(shared, in, hidden);  // b = 0, d = 0.1: starts equal to the base
  vera::adapter<float> ad2(shared, hidden, out);
  matrix w1 = random_matrix(hidden, in, 0.15f);  // frozen, PyTorch layout (out x in)
  matrix w2 = random_matrix(out, hidden, 0.12f);

  // The target task: the frozen network moved by an update of VeRA's form, so b and d can reach
  // it exactly.
  const vera::adapter<float> shift1 = target_adapter(shared, in, hidden, 11);
  const vera::adapter<float> shift2 = target_adapter(shared, hidden, out, 12);
  const matrix teacher1 = vera::xt::merged_weight(w1, shift1);
  const matrix teacher2 = vera::xt::merged_weight(w2, shift2);

  std::printf("vera %s xtensor quickstart: 2 frozen layers (%zux%zu, %zux%zu), rank %zu\n",
              vera::version_string, hidden, in, out, hidden, rank);
  std::printf("trainable parameters: %ld (full fine-tuning would train %zu)\n",
              long(ad1.trainable_parameters() + ad2.trainable_parameters()),
              hidden * in + out * hidden);

  // Per-layer state reused every step, so the steady state allocates nothing in vera.
  vera::forward_context<float> ctx1, ctx2;
  vera::workspace<float> ws1, ws2;
  vera::xt::gradients<float> grads1(ad1), grads2(ad2);
  layer_optimizer opt1(ad1, 0.05f, 0.9f), opt2(ad2, 0.05f, 0.9f);
  matrix x, target, pre, h, y, grad_y, grad_h;
  float first_loss = 0.0f, loss = 0.0f;

  for (int step = 0; step <= steps; ++step) {
    x = random_matrix(batch, in, 1.0f);
    target = base_layer(xt::tanh(base_layer(x, teacher1)), teacher2);

    vera::xt::forward(x, w1, vera::no_bias, ad1).train(ctx1).using_workspace(ws1).assign_to(pre);
    // The activation is an xtensor expression: vera evaluates it once for both of its products.
    vera::xt::forward(xt::tanh(pre), w2, vera::no_bias, ad2)
        .train(ctx2)
        .using_workspace(ws2)
        .assign_to(y);

    grad_y = (y - target) / float(batch);  // d/dy of 0.5 * mean over rows of |y - target|^2
    loss = 0.5f * xt::sum(xt::square(y - target))() / float(batch);
    if (step == 0) first_loss = loss;

    grads2 = vera::xt::parameter_gradients(grad_y, ad2, ctx2).using_workspace(ws2);
    vera::xt::input_gradient(grad_y, w2, ad2, ctx2).using_workspace(ws2).assign_to(grad_h);
    grad_h *= 1.0f - xt::square(xt::tanh(pre));  // through tanh
    grads1 = vera::xt::parameter_gradients(grad_h, ad1, ctx1).using_workspace(ws1);

    opt1.step(ad1, grads1);
    opt2.step(ad2, grads2);

    if (step % (steps / 10) == 0) std::printf("step %4d  loss %.4e\n", step, double(loss));
  }

  // Merging folds the adapters into W0 (checked for NaN/Inf first): the frozen layers alone now
  // give the adapted network's predictions.
  const matrix y_adapter = vera::xt::forward(
      xt::tanh(vera::xt::forward(x, w1, vera::no_bias, ad1).eval()), w2, vera::no_bias, ad2);
  vera::xt::safe_merge(w1, ad1);
  vera::xt::safe_merge(w2, ad2);
  const matrix y_merged = base_layer(xt::tanh(base_layer(x, w1)), w2);
  const float merge_gap = xt::amax(xt::abs(y_adapter - y_merged))();
  std::printf("loss %.4e -> %.4e; merged vs adapter max |diff| = %.2e\n", double(first_loss),
              double(loss), double(merge_gap));

  const bool ok = std::isfinite(loss) && loss < 0.5f * first_loss && merge_gap < 1e-4f;
  if (!ok) std::printf("xtensor quickstart: the loss did not fall as expected\n");
  return ok ? 0 : 1;
}
