// SPDX-License-Identifier: Apache-2.0
// Data-parallel VeRA fine-tuning on Fashion-MNIST over MPI: each rank computes gradients on its
// share of every global batch, one fused all-reduce averages them, every rank takes the same step.
//
//   mpirun -np 2 fashion_mnist_mpi [--quick] [--check-single] [options]
//
// The set-up is the one of the fashion_mnist example (pretrain on classes 5-9, adapt to 0-4), with
// VeRA on both hidden layers plus a new head. Rank 0 pretrains and broadcasts the base weights;
// every rank regenerates the projection from the seed, and start-up checks make sure that the
// projections, the initial parameters and the gradient layouts agree on all ranks.
// --check-single makes rank 0 retrain the same model in one process on the whole global batches
// and compare: data parallelism must not change the result beyond float rounding.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <vera/distributed.hpp>
#include <vera/optim.hpp>
#include <vera/vera.hpp>

#include "dataset.hpp"
#include "model.hpp"

namespace {

using namespace fashion;

struct settings {
  std::string data = "/usr/share/datasets/fashion-mnist";
  bool quick = false;
  bool check_single = false;
  int epochs = 2;
  Eigen::Index hidden = 256;
  Eigen::Index rank = 1024;
  Eigen::Index batch = 128;  // global: split evenly over the ranks
  std::uint64_t seed = 0;
};

const std::vector<int> source_classes = {5, 6, 7, 8, 9};
const std::vector<int> target_classes = {0, 1, 2, 3, 4};

// Parameters of a single-process and a data-parallel run agree to float rounding; the gradients
// are summed in a different order, and the differences grow slowly over the steps. Measured on two
// ranks: 2.8e-7 after the 8 steps of --quick, 6.3e-5 for parameters up to 2.44 after 2 epochs
// (468 steps). The bound, relative to max(1, largest parameter), holds for runs of that length;
// a rank training on the wrong rows or skipping the reduction moves parameters by far more.
constexpr float agreement_bound = 1e-4f;

bool parse(int argc, char** argv, settings& s) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--quick") {
      s.quick = true;
    } else if (arg == "--check-single") {
      s.check_single = true;
    } else if (arg == "--data" && has_value) {
      s.data = argv[++i];
    } else if ((arg == "--epochs" || arg == "--hidden" || arg == "--rank" || arg == "--batch" ||
                arg == "--seed") && has_value) {
      const long v = std::strtol(argv[++i], nullptr, 10);
      if (v < (arg == "--seed" ? 0 : 1)) return false;
      if (arg == "--epochs") s.epochs = static_cast<int>(v);
      if (arg == "--hidden") s.hidden = v;
      if (arg == "--rank") s.rank = v;
      if (arg == "--batch") s.batch = v;
      if (arg == "--seed") s.seed = static_cast<std::uint64_t>(v);
    } else {
      return false;
    }
  }
  if (s.quick) {
    s.epochs = 1;
    s.hidden = 64;
    s.rank = 128;
    s.check_single = true;
  }
  return true;
}

mlp make_vera_net(const linear_weights& fc1, const linear_weights& fc2,
                  const vera::projection<float>& shared, const settings& s) {
  std::mt19937 rng(static_cast<std::uint32_t>(s.seed + 101));
  linear_weights head = linear_weights::init(s.hidden, 5, rng);
  return mlp(layer(fc1, shared, {}), layer(fc2, shared, {}), layer(std::move(head), mode::full));
}

void broadcast(linear_weights& l, Eigen::Index in, Eigen::Index out) {
  l.w.resize(out, in);
  l.b.resize(out);
  MPI_Bcast(l.w.data(), static_cast<int>(l.w.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  MPI_Bcast(l.b.data(), static_cast<int>(l.b.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
}

// One optimizer over the whole model (VeRA vectors at 1e-2, head at 1e-3 would need two; one
// learning rate keeps the example short), AdamW as in the main example.
struct trainer {
  mlp net;
  vera::optim::adamw<float> body{{1e-2, 0.9, 0.999, 1e-8, 0.01}};
  vera::optim::adamw<float> head{{1e-3, 0.9, 0.999, 1e-8, 0.01}};
  explicit trainer(mlp m) : net(std::move(m)) {
    net.fc1().register_with(body, "fc1");
    net.fc2().register_with(body, "fc2");
    net.head().register_with(head, "head");
  }
  void step() {
    body.step();
    head.step();
  }
  // All trained values, in registration order, for comparing two runs.
  std::vector<float> values() const {
    std::vector<float> out;
    for (const auto* opt : {&body, &head}) {
      for (const auto& p : opt->parameters().items()) out.insert(out.end(), p.value, p.value + p.size);
    }
    return out;
  }
};

// Trains over `batches` for the configured epochs. With a bucket, each rank takes rows
// [first, first + count) of every global batch and the gradients are averaged over the ranks.
double train(trainer& t, batcher& batches, const settings& s, Eigen::Index first, Eigen::Index count,
             vera::distributed::gradient_bucket<float>* bucket, bool report) {
  matrix x;
  std::vector<int> y;
  double loss = 0;
  const Eigen::Index steps = batches.batches_per_epoch();
  for (int epoch = 0; epoch < s.epochs; ++epoch) {
    batches.shuffle();
    double sum = 0;
    for (Eigen::Index k = 0; k < steps; ++k) {
      batches.gather(k, first, count, x, y);
      double local = t.net.train_step(x, y);
      if (bucket != nullptr) {
        vera::distributed::allreduce_mean(*bucket);
        local = vera::distributed::mean_over_ranks(local);
      }
      t.step();
      sum += local;
    }
    loss = sum / static_cast<double>(steps);
    if (report) std::printf("  epoch %d: mean training loss %.4f\n", epoch + 1, loss);
  }
  return loss;
}

int run(const settings& s, int rank, int ranks) {
  if (s.batch % ranks != 0) {
    if (rank == 0) {
      std::fprintf(stderr, "fashion_mnist_mpi: the global batch %ld must divide evenly over %d ranks\n",
                   static_cast<long>(s.batch), ranks);
    }
    return 2;
  }
  dataset data;
  try {
    data = load_fashion_mnist(s.data);
  } catch (const idx_error& e) {
    if (rank == 0) {
      std::fprintf(stderr, "fashion_mnist_mpi: cannot load Fashion-MNIST: %s\n"
                   "  install it with `apt-get install dataset-fashion-mnist`, or pass --data DIR\n",
                   e.what());
    }
    return 77;
  }
  const std::size_t limit = s.quick ? 1024 : 0;
  const labelled source = select_classes(data.train, source_classes, limit);
  const labelled target = select_classes(data.train, target_classes, limit);
  const labelled target_test = select_classes(data.test, target_classes, s.quick ? 500 : 0);

  // Rank 0 pretrains; the others receive the weights, so that no rank depends on another
  // producing bit-identical floating point on possibly different hardware.
  linear_weights fc1, fc2;
  if (rank == 0) {
    std::mt19937 rng(static_cast<std::uint32_t>(s.seed));
    trainer pre(mlp(layer(linear_weights::init(pixels, s.hidden, rng), mode::full),
                    layer(linear_weights::init(s.hidden, s.hidden, rng), mode::full),
                    layer(linear_weights::init(s.hidden, 5, rng), mode::full)));
    pre.body.set_lr(1e-3);
    batcher batches(source, s.batch, s.seed + 17);
    train(pre, batches, s, 0, s.batch, nullptr, false);
    fc1 = pre.net.fc1().weights();
    fc2 = pre.net.fc2().weights();
  }
  broadcast(fc1, pixels, s.hidden);
  broadcast(fc2, s.hidden, s.hidden);

  const vera::projection<float> shared({s.seed, s.rank, pixels, s.hidden});
  vera::distributed::check_projection(shared);

  trainer dp(make_vera_net(fc1, fc2, shared, s));
  vera::distributed::gradient_bucket<float> bucket;
  dp.net.fc1().register_gradients(bucket, "fc1");
  dp.net.fc2().register_gradients(bucket, "fc2");
  dp.net.head().register_gradients(bucket, "head");
  vera::distributed::check_layout(bucket);
  vera::distributed::check_parameters(dp.body.parameters());
  vera::distributed::check_parameters(dp.head.parameters());

  const Eigen::Index share = s.batch / ranks;
  if (rank == 0) {
    std::printf("data-parallel VeRA on %d rank(s): global batch %ld (%ld rows per rank), "
                "%ld gradient scalars = %zu bytes all-reduced per step in one call\n",
                ranks, static_cast<long>(s.batch), static_cast<long>(share),
                static_cast<long>(bucket.size()), bucket.bytes());
  }
  batcher batches(target, s.batch, s.seed + 29);
  const double start = MPI_Wtime();
  train(dp, batches, s, rank * share, share, &bucket, rank == 0);
  const double seconds = MPI_Wtime() - start;
  const double acc = accuracy(dp.net, target_test);
  if (rank == 0) {
    std::printf("target test accuracy %.2f%% after %d epoch(s), %.1f s\n", 100 * acc, s.epochs, seconds);
  }

  int status = 0;
  if (s.check_single && rank == 0) {
    trainer single(make_vera_net(fc1, fc2, shared, s));
    batcher same_order(target, s.batch, s.seed + 29);
    train(single, same_order, s, 0, s.batch, nullptr, false);
    const std::vector<float> a = dp.values(), b = single.values();
    float largest = 0, difference = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      largest = std::max(largest, std::abs(b[i]));
      difference = std::max(difference, std::abs(a[i] - b[i]));
    }
    const double single_acc = accuracy(single.net, target_test);
    std::printf("single process, same global batches: accuracy %.2f%%; largest parameter "
                "difference %.3g (parameters up to %.3g, bound %.0e relative)\n",
                100 * single_acc, static_cast<double>(difference), static_cast<double>(largest),
                static_cast<double>(agreement_bound));
    if (!(difference <= agreement_bound * std::max(1.0f, largest))) {
      std::fprintf(stderr, "fashion_mnist_mpi: data-parallel and single-process training differ\n");
      status = 1;
    }
  }
  MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  settings s;
  int status = 0;
  if (!parse(argc, argv, s)) {
    if (rank == 0) {
      std::fprintf(stderr, "usage: mpirun -np P fashion_mnist_mpi [--quick] [--check-single] "
                           "[--data DIR] [--epochs N] [--hidden H] [--rank R] [--batch B] [--seed S]\n");
    }
    status = 2;
  } else {
    try {
      status = run(s, rank, ranks);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fashion_mnist_mpi (rank %d): %s\n", rank, e.what());
      status = 1;
    }
  }
  MPI_Finalize();
  return status;
}
