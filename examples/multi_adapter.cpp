// SPDX-License-Identifier: Apache-2.0
// Trains four adapters, one per task, in shared batches whose rows are tagged with their task.
//
// A frozen two-layer network y = W2 tanh(W1 x) serves four regression tasks. Each task is the
// same network moved by an update of VeRA's form. One adapter_set per layer holds the four
// adapters; every step runs one mixed batch through both layers, with each row going through
// its own task's adapter, and one backward gives all four adapters their gradients. Each task's
// loss is printed as it falls; the exit code is non-zero if any does not.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <vera/multi.hpp>

namespace {

using matrix = Eigen::MatrixXf;

matrix random_matrix(std::mt19937& rng, Eigen::Index rows, Eigen::Index cols, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  matrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

// SGD with momentum over every adapter's vectors at once (the columns of the set's matrices).
struct momentum_sgd {
  float lr;
  float beta;
  matrix velocity;
  template <class Param>
  void step(Param&& param, const matrix& grad) {
    if (velocity.rows() != grad.rows() || velocity.cols() != grad.cols()) velocity = matrix::Zero(grad.rows(), grad.cols());
    velocity = beta * velocity + grad;
    param -= lr * velocity;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int steps = quick ? 150 : 600;
  const int tasks = 4;
  const Eigen::Index in = 64, hidden = 96, out = 32, rank = 48, batch = 256;

  std::mt19937 rng(3);
  const vera::projection<float> shared({/*seed=*/0, rank, /*max_in=*/hidden, /*max_out=*/hidden});
  const matrix w1 = random_matrix(rng, hidden, in, 0.15f);
  const matrix w2 = random_matrix(rng, out, hidden, 0.12f);
  const Eigen::VectorXf bias1 = Eigen::VectorXf::Zero(hidden), bias2 = Eigen::VectorXf::Zero(out);

  // One set per layer. Both sets get their adapters in the same order, so one id names a task's
  // adapter in either layer and one row assignment serves the whole network.
  vera::adapter_set<float> layer1(shared, in, hidden), layer2(shared, hidden, out);
  std::vector<vera::adapter_id> adapter_of_task;
  for (int t = 0; t < tasks; ++t) {
    adapter_of_task.push_back(layer1.add());
    layer2.add();
  }

  // Each task's teacher: the frozen network moved by a random update of VeRA's form.
  std::vector<matrix> teacher1, teacher2;
  for (int t = 0; t < tasks; ++t) {
    vera::adapter_options random_init;
    random_init.init = vera::init_kind::random;
    random_init.init_seed = 100 + static_cast<std::uint64_t>(t);
    vera::adapter<float> shift1(shared, in, hidden, random_init);
    random_init.init_seed = 200 + static_cast<std::uint64_t>(t);
    vera::adapter<float> shift2(shared, hidden, out, random_init);
    shift1.lambda_b() *= 0.3f;
    shift2.lambda_b() *= 0.3f;
    teacher1.emplace_back(vera::merged_weight(w1, shift1));
    teacher2.emplace_back(vera::merged_weight(w2, shift2));
  }

  std::printf("vera %s multi_adapter: %d tasks, one adapter each per layer, trained in shared batches of %ld rows\n",
              vera::version_string, tasks, long(batch));

  vera::mixed_context<float> ctx1, ctx2;
  vera::mixed_workspace<float> ws1, ws2;
  vera::mixed_gradients<float> grads1(layer1), grads2(layer2);
  momentum_sgd opt_b1{0.05f, 0.9f, {}}, opt_d1{0.05f, 0.9f, {}}, opt_b2{0.05f, 0.9f, {}}, opt_d2{0.05f, 0.9f, {}};
  matrix x(batch, in), pre(batch, hidden), h(batch, hidden), y(batch, out), target(batch, out);
  matrix grad_y(batch, out), grad_h(batch, hidden);
  std::vector<int> task_of_row(static_cast<std::size_t>(batch));
  std::vector<int> adapter_of_row(static_cast<std::size_t>(batch));
  std::vector<double> first_loss(tasks, 0.0), loss(tasks, 0.0);
  std::uniform_int_distribution<int> pick_task(0, tasks - 1);

  for (int step = 0; step <= steps; ++step) {
    x = random_matrix(rng, batch, in, 1.0f);
    std::vector<int> rows_of_task(tasks, 0);
    for (Eigen::Index i = 0; i < batch; ++i) {
      const int t = pick_task(rng);
      task_of_row[static_cast<std::size_t>(i)] = t;
      adapter_of_row[static_cast<std::size_t>(i)] = adapter_of_task[static_cast<std::size_t>(t)];
      ++rows_of_task[static_cast<std::size_t>(t)];
      target.row(i) = (x.row(i) * teacher1[static_cast<std::size_t>(t)].transpose()).array().tanh().matrix() *
                      teacher2[static_cast<std::size_t>(t)].transpose();
    }

    pre = vera::mixed_forward(x, w1, bias1, layer1, adapter_of_row).train(ctx1).using_workspace(ws1);
    h = pre.array().tanh().matrix();
    y = vera::mixed_forward(h, w2, bias2, layer2, adapter_of_row).train(ctx2).using_workspace(ws2);

    // The sum over tasks of each task's mean squared error, so that every adapter sees a
    // gradient of the size it would get from a batch of its own rows.
    std::fill(loss.begin(), loss.end(), 0.0);
    for (Eigen::Index i = 0; i < batch; ++i) {
      const auto t = static_cast<std::size_t>(task_of_row[static_cast<std::size_t>(i)]);
      const float rows = static_cast<float>(std::max(1, rows_of_task[t]));
      grad_y.row(i) = (y.row(i) - target.row(i)) / rows;
      loss[t] += 0.5 * double((y.row(i) - target.row(i)).squaredNorm()) / rows;
    }
    if (step == 0) first_loss = loss;

    vera::mixed_backward(grad_y, w2, layer2, ctx2).using_workspace(ws2).eval_to(grads2, grad_h);
    grad_h.array() *= 1.0f - h.array().square();  // through tanh
    grads1 = vera::mixed_parameter_gradients(grad_h, layer1, ctx1).using_workspace(ws1);

    // One optimizer step updates all four adapters of a layer.
    opt_b1.step(layer1.lambda_b_matrix(), grads1.lambda_b);
    opt_d1.step(layer1.lambda_d_matrix(), grads1.lambda_d);
    opt_b2.step(layer2.lambda_b_matrix(), grads2.lambda_b);
    opt_d2.step(layer2.lambda_d_matrix(), grads2.lambda_d);

    if (step % (steps / 10) == 0) {
      std::printf("step %4d  loss", step);
      for (int t = 0; t < tasks; ++t) std::printf("  task %d %.4e", t, loss[static_cast<std::size_t>(t)]);
      std::printf("\n");
    }
  }

  // Serving one task alone: merge its adapters into copies of W1 and W2 and compare with the
  // mixed forward on the rows of that task.
  const vera::adapter_id served = adapter_of_task[1];
  matrix merged1 = w1, merged2 = w2;
  layer1.merge(merged1, served);
  layer2.merge(merged2, served);
  const matrix h_merged = (x * merged1.transpose()).array().tanh().matrix();
  const matrix y_merged = h_merged * merged2.transpose();
  layer1.unmerge(merged1);
  layer2.unmerge(merged2);
  pre = vera::mixed_forward(x, w1, bias1, layer1, adapter_of_row);
  h = pre.array().tanh().matrix();
  y = vera::mixed_forward(h, w2, bias2, layer2, adapter_of_row);
  float merge_gap = 0.0f;
  for (Eigen::Index i = 0; i < batch; ++i) {
    if (adapter_of_row[static_cast<std::size_t>(i)] != served) continue;
    merge_gap = std::max(merge_gap, (y.row(i) - y_merged.row(i)).cwiseAbs().maxCoeff());
  }
  std::printf("task 1 merged into W1, W2 vs mixed batch rows of task 1: max |diff| = %.2e\n", double(merge_gap));

  bool ok = merge_gap < 1e-4f;
  for (int t = 0; t < tasks; ++t) {
    const auto k = static_cast<std::size_t>(t);
    std::printf("task %d: loss %.4e -> %.4e\n", t, first_loss[k], loss[k]);
    ok = ok && std::isfinite(loss[k]) && loss[k] < 0.5 * first_loss[k];
  }
  if (!ok) std::printf("multi_adapter: a task's loss did not fall as expected\n");
  return ok ? 0 : 1;
}
