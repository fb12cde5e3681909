// SPDX-License-Identifier: Apache-2.0
// Quickstart: adapt a frozen two-layer network to a new regression target by training only b and d.
//
// A "pretrained" network y = W2 tanh(W1 x) is frozen. The target task is the same network with
// shifted weights; VeRA trains out + rank numbers per layer against the thousands a full
// fine-tune would touch, and the loss printed every few steps falls.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include <vera/vera.hpp>

namespace {

using matrix = Eigen::MatrixXf;

matrix random_matrix(std::mt19937& rng, Eigen::Index rows, Eigen::Index cols, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  matrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

// SGD with momentum on one vector; a full trainer would use vera's optimizers.
struct momentum_sgd {
  float lr;
  float beta;
  Eigen::VectorXf velocity;
  template <class Param, class Grad>
  void step(Param&& param, const Grad& grad) {
    if (velocity.size() != grad.size()) velocity = Eigen::VectorXf::Zero(grad.size());
    velocity = beta * velocity + grad;
    param -= lr * velocity;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int steps = quick ? 150 : 600;
  const Eigen::Index in = 64, hidden = 96, out = 32, rank = 48, batch = 128;

  std::mt19937 rng(7);
  // One projection shared by both layers, sized by the largest in/out among them (as in PEFT).
  const vera::projection<float> shared({/*seed=*/0, rank, /*max_in=*/hidden, /*max_out=*/hidden});

  vera::linear<float> layer1(random_matrix(rng, hidden, in, 0.15f), Eigen::VectorXf::Zero(hidden),
                             vera::adapter<float>(shared, in, hidden));
  vera::linear<float> layer2(random_matrix(rng, out, hidden, 0.12f), Eigen::VectorXf::Zero(out),
                             vera::adapter<float>(shared, hidden, out));

  // The target task: the frozen network moved by an update of VeRA's form, so b and d can reach
  // it exactly (random lambdas: b = 0.3, d ~ N(0, 1)).
  vera::adapter_options random_init;
  random_init.init = vera::init_kind::random;
  random_init.init_seed = 11;
  vera::adapter<float> shift1(shared, in, hidden, random_init);
  random_init.init_seed = 12;
  vera::adapter<float> shift2(shared, hidden, out, random_init);
  shift1.lambda_b() *= 0.3f;
  shift2.lambda_b() *= 0.3f;
  const matrix teacher1 = vera::merged_weight(layer1.weight(), shift1);
  const matrix teacher2 = vera::merged_weight(layer2.weight(), shift2);

  std::printf("vera %s quickstart: 2 frozen layers (%ldx%ld, %ldx%ld), shared projection rank %ld\n",
              vera::version_string, long(hidden), long(in), long(out), long(hidden), long(rank));
  std::printf("trainable parameters: %ld (full fine-tuning would train %ld)\n",
              long(layer1.vera_adapter().trainable_parameters() + layer2.vera_adapter().trainable_parameters()),
              long(hidden * in + out * hidden));

  vera::gradients<float> grads1(layer1.vera_adapter()), grads2(layer2.vera_adapter());
  momentum_sgd opt_b1{0.05f, 0.9f, {}}, opt_d1{0.05f, 0.9f, {}}, opt_b2{0.05f, 0.9f, {}}, opt_d2{0.05f, 0.9f, {}};
  matrix x(batch, in), pre(batch, hidden), h(batch, hidden), y(batch, out), target(batch, out);
  matrix grad_y(batch, out), grad_h(batch, hidden);
  float first_loss = 0.0f, loss = 0.0f;

  for (int step = 0; step <= steps; ++step) {
    x = random_matrix(rng, batch, in, 1.0f);
    target = (x * teacher1.transpose()).array().tanh().matrix() * teacher2.transpose();

    layer1.forward_train(x, pre);
    h = pre.array().tanh().matrix();
    layer2.forward_train(h, y);

    grad_y = (y - target) / float(batch);  // d/dy of 0.5 * mean over rows of |y - target|^2
    loss = 0.5f * (y - target).squaredNorm() / float(batch);
    if (step == 0) first_loss = loss;

    layer2.backward(grad_y, grads2, grad_h);
    grad_h.array() *= 1.0f - h.array().square();  // through tanh
    layer1.backward(grad_h, grads1);

    opt_b1.step(layer1.vera_adapter().lambda_b(), grads1.lambda_b);
    opt_d1.step(layer1.vera_adapter().lambda_d(), grads1.lambda_d);
    opt_b2.step(layer2.vera_adapter().lambda_b(), grads2.lambda_b);
    opt_d2.step(layer2.vera_adapter().lambda_d(), grads2.lambda_d);

    if (step % (steps / 10) == 0) std::printf("step %4d  loss %.4e\n", step, double(loss));
  }

  // Merging folds the adapter into W0: same predictions, no extra cost at inference.
  matrix y_adapter(batch, out), y_merged(batch, out);
  layer1.forward(x, pre);
  h = pre.array().tanh().matrix();
  layer2.forward(h, y_adapter);
  layer1.merge();
  layer2.merge();
  layer1.forward(x, pre);
  h = pre.array().tanh().matrix();
  layer2.forward(h, y_merged);
  const float merge_gap = (y_adapter - y_merged).cwiseAbs().maxCoeff();
  std::printf("loss %.4e -> %.4e; merged vs adapter max |diff| = %.2e\n", double(first_loss),
              double(loss), double(merge_gap));

  const bool ok = std::isfinite(loss) && loss < 0.5f * first_loss && merge_gap < 1e-4f;
  if (!ok) std::printf("quickstart: the loss did not fall as expected\n");
  return ok ? 0 : 1;
}
