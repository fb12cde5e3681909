// SPDX-License-Identifier: Apache-2.0
// A complete VeRA training loop around a model the caller owns, with checkpoints that resume
// exactly.
//
// The base network is three plain Eigen matrices that vera never owns or changes. vera adds the
// adapters (one shared projection, b and d per layer), computes forward and backward through the
// expression API, and AdamW updates only b and d. A checkpoint is a PEFT adapter directory plus
// the optimizer's moments in a safetensors file. The program trains once without interruption
// and once with a save, a load into fresh objects and a restart, and checks that both runs end
// with bit-identical lambdas.
//
// Copy the `trainer` class and `save_checkpoint` / `load_checkpoint` into your own code; the rest
// (data, teacher, command line) is scaffolding. docs/embedding.md explains lifetimes and threads.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <vera/io.hpp>
#include <vera/optim.hpp>
#include <vera/vera.hpp>

namespace {

namespace fs = std::filesystem;
using matrix = Eigen::MatrixXf;
using vector = Eigen::VectorXf;

constexpr int exit_failure = 1;
constexpr int exit_usage = 2;

const char* const usage = R"(usage: custom_trainer [--quick] [--help]

Trains VeRA adapters on a frozen 3-layer MLP (synthetic regression), saves a checkpoint halfway,
resumes from it in fresh objects and checks that the resumed run ends bit-identical to an
uninterrupted one.

  --quick   a short run (used as a test)
  --help    this text

Exit codes: 0 success, 1 failure (including a resume that is not exact), 2 bad usage.
)";

struct settings {
  Eigen::Index in = 32, hidden = 128, out = 16, rank = 64;
  Eigen::Index batch = 64, train_rows = 2048, test_rows = 512;
  int steps = 1500;  // each of the two runs; the interrupted one saves after half of them
  int report_every = 250;
};

// ---------------------------------------------------------------------------------------------
// The caller's side: a frozen model and data. Nothing here knows about vera.

// x -> tanh(W1 x + b1) -> tanh(W2 x) -> W3 x + b3. Layer 2 has no bias, as many
// projections in transformers do.
struct base_model {
  matrix w1, w2, w3;  // out x in, as torch.nn.Linear stores them
  vector b1, b3;
};

matrix random_matrix(std::mt19937& rng, Eigen::Index rows, Eigen::Index cols, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  matrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

base_model random_model(std::mt19937& rng, const settings& s) {
  base_model m;
  m.w1 = random_matrix(rng, s.hidden, s.in, 1.0f / std::sqrt(float(s.in)));
  m.b1 = random_matrix(rng, s.hidden, 1, 0.1f);
  m.w2 = random_matrix(rng, s.hidden, s.hidden, 1.0f / std::sqrt(float(s.hidden)));
  m.w3 = random_matrix(rng, s.out, s.hidden, 1.0f / std::sqrt(float(s.hidden)));
  m.b3 = random_matrix(rng, s.out, 1, 0.1f);
  return m;
}

// Plain-Eigen forward of the base model, used only to make targets.
matrix predict(const base_model& m, const matrix& x) {
  const matrix h1 = ((x * m.w1.transpose()).rowwise() + m.b1.transpose()).array().tanh().matrix();
  const matrix h2 = (h1 * m.w2.transpose()).array().tanh().matrix();
  return (h2 * m.w3.transpose()).rowwise() + m.b3.transpose();
}

struct dataset {
  matrix x_train, y_train, x_test, y_test;
};

// The new task is a nearby network: every weight moved by dense noise, so no adapter fits it
// exactly and the loss falls to a floor rather than to zero.
dataset make_task(std::mt19937& rng, const base_model& base, const settings& s) {
  base_model teacher = base;
  teacher.w1 += random_matrix(rng, s.hidden, s.in, 0.5f / std::sqrt(float(s.in)));
  teacher.w2 += random_matrix(rng, s.hidden, s.hidden, 0.5f / std::sqrt(float(s.hidden)));
  teacher.w3 += random_matrix(rng, s.out, s.hidden, 0.5f / std::sqrt(float(s.hidden)));
  dataset d;
  d.x_train = random_matrix(rng, s.train_rows, s.in, 1.0f);
  d.x_test = random_matrix(rng, s.test_rows, s.in, 1.0f);
  d.y_train = predict(teacher, d.x_train);
  d.y_test = predict(teacher, d.x_test);
  return d;
}

// The module paths name the adapted layers in the saved PEFT adapter.
vera::io::layer_shapes adapted_layers(const base_model& m) {
  return {{"fc1", {m.w1.cols(), m.w1.rows()}},
          {"fc2", {m.w2.cols(), m.w2.rows()}},
          {"fc3", {m.w3.cols(), m.w3.rows()}}};
}

// ---------------------------------------------------------------------------------------------
// The part to copy: a training step over the caller's weights and vera's adapters.

// What each adapted layer keeps between steps. Created once and reused: after the first step
// at a given batch size, a step allocates nothing.
struct layer_state {
  vera::forward_context<float> context;  // P = X Aᵀ of the last training forward, for backward
  vera::workspace<float> scratch;
  vera::gradients<float> grads;
};

// Holds references to the base model and to the adapters; both must outlive it. The optimizer
// keeps raw pointers to the lambdas and to the gradient buffers below, so a trainer is neither
// copied nor moved.
class trainer {
 public:
  trainer(const base_model& base, vera::io::model_adapter<float>& adapters,
          const vera::optim::adamw_options& options)
      : base_(base),
        fc1_(adapters.at("fc1")),
        fc2_(adapters.at("fc2")),
        fc3_(adapters.at("fc3")),
        optimizer_(options) {
    // Sized before registration because the optimizer keeps their addresses; every later
    // `grads = vera::parameter_gradients(...)` writes into these same buffers.
    s1_.grads = vera::gradients<float>(fc1_);
    s2_.grads = vera::gradients<float>(fc2_);
    s3_.grads = vera::gradients<float>(fc3_);
    // Names become the parameter names in the optimizer's checkpoint ("fc1.lambda_b", ...).
    optimizer_.add("fc1", fc1_, s1_.grads);
    optimizer_.add("fc2", fc2_, s2_.grads);
    optimizer_.add("fc3", fc3_, s3_.grads);
  }
  trainer(const trainer&) = delete;
  trainer& operator=(const trainer&) = delete;

  vera::optim::adamw<float>& optimizer() noexcept { return optimizer_; }

  /// \brief One AdamW step on the mean squared error of a batch; returns the loss before it.
  template <class X, class Y>
  float step(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& target) {
    // .train(ctx) keeps what backward needs (n x rank numbers, not the n x in input) and turns
    // dropout on; the workspace stands in for every temporary the evaluation would allocate.
    h1_ = vera::forward(x, base_.w1, base_.b1, fc1_)
              .train(s1_.context)
              .using_workspace(s1_.scratch);
    h1_ = h1_.array().tanh().matrix();
    h2_ = vera::forward(h1_, base_.w2, vera::no_bias, fc2_)
              .train(s2_.context)
              .using_workspace(s2_.scratch);
    h2_ = h2_.array().tanh().matrix();
    y_ = vera::forward(h2_, base_.w3, base_.b3, fc3_)
             .train(s3_.context)
             .using_workspace(s3_.scratch);

    // Loss: 0.5 * mean over rows of |y - target|², whose gradient is (y - target) / rows.
    grad_y_ = (y_ - target) / float(x.rows());
    const float loss = 0.5f * grad_y_.squaredNorm() * float(x.rows());

    // Backward, top layer first. Each layer gives the gradients of its own b and d, and the
    // gradient of its input for the layer below; fc1's input is data, so it needs none.
    s3_.grads = vera::parameter_gradients(grad_y_, fc3_, s3_.context).using_workspace(s3_.scratch);
    grad_h2_ =
        vera::input_gradient(grad_y_, base_.w3, fc3_, s3_.context).using_workspace(s3_.scratch);
    grad_h2_.array() *= 1.0f - h2_.array().square();  // through tanh

    s2_.grads = vera::parameter_gradients(grad_h2_, fc2_, s2_.context).using_workspace(s2_.scratch);
    grad_h1_ =
        vera::input_gradient(grad_h2_, base_.w2, fc2_, s2_.context).using_workspace(s2_.scratch);
    grad_h1_.array() *= 1.0f - h1_.array().square();

    s1_.grads = vera::parameter_gradients(grad_h1_, fc1_, s1_.context).using_workspace(s1_.scratch);

    // Throws before changing anything if a gradient is not finite.
    optimizer_.step();
    return loss;
  }

  /// \brief Mean squared error without training: no context, so no dropout and nothing saved.
  ///        Resizes the activation buffers to x's rows, so keep it out of the training loop.
  float evaluate(const matrix& x, const matrix& target) {
    h1_ = vera::forward(x, base_.w1, base_.b1, fc1_).using_workspace(s1_.scratch);
    h1_ = h1_.array().tanh().matrix();
    h2_ = vera::forward(h1_, base_.w2, vera::no_bias, fc2_).using_workspace(s2_.scratch);
    h2_ = h2_.array().tanh().matrix();
    y_ = vera::forward(h2_, base_.w3, base_.b3, fc3_).using_workspace(s3_.scratch);
    return 0.5f * (y_ - target).squaredNorm() / float(x.rows());
  }

 private:
  const base_model& base_;
  vera::adapter<float>& fc1_;
  vera::adapter<float>& fc2_;
  vera::adapter<float>& fc3_;
  layer_state s1_, s2_, s3_;
  vera::optim::adamw<float> optimizer_;
  // Activations and their gradients, sized by the first step and reused after it.
  matrix h1_, h2_, y_, grad_y_, grad_h2_, grad_h1_;
};

// ---------------------------------------------------------------------------------------------
// Checkpoints: the adapter as PEFT writes it, plus what AdamW needs to continue exactly.

const char* const optimizer_file = "optimizer.safetensors";

// Moments are stored as float32 tensors "<parameter>.exp_avg" / ".exp_avg_sq" (PyTorch's names),
// so float values round-trip bit for bit; step counts go in the metadata as decimal strings.
// Each file is written atomically, but not the pair: write every checkpoint to a new directory.
void save_checkpoint(const fs::path& dir, const vera::io::model_adapter<float>& adapters,
                     const vera::optim::adamw<float>& optimizer, std::uint64_t step) {
  // Seed-only: A and B are regenerated from the seed on load, so the file holds only b and d.
  vera::io::save_peft_adapter(adapters, dir / "adapter");
  vera::io::safetensors_writer moments;
  moments.set_metadata("step", std::to_string(step));
  for (const vera::optim::slot_state<float>& slot : optimizer.state()) {
    moments.set_metadata(slot.parameter + ".steps", std::to_string(slot.steps));
    // Empty before a parameter's first step; a tensor of shape [0] records that faithfully.
    const std::uint64_t size = slot.first.size();
    moments.add(slot.parameter + ".exp_avg", vera::io::dtype::f32, {size}, slot.first.data());
    moments.add(slot.parameter + ".exp_avg_sq", vera::io::dtype::f32, {size}, slot.second.data());
  }
  moments.write(dir / optimizer_file);
}

std::uint64_t metadata_number(const vera::io::safetensors_view& file, const std::string& key) {
  const auto found = file.metadata().find(key);
  if (found == file.metadata().end()) {
    throw vera::format_error(file.source() + ": no metadata entry '" + key + "'");
  }
  return std::stoull(found->second);
}

// Restores the optimizer of a trainer built over freshly loaded adapters; returns the step to
// continue from. load_state checks names, sizes and finiteness before it changes anything.
std::uint64_t load_checkpoint(const fs::path& dir, vera::optim::adamw<float>& optimizer) {
  const vera::io::safetensors_file file(dir / optimizer_file);
  std::vector<vera::optim::slot_state<float>> saved;
  for (const auto& parameter : optimizer.parameters().items()) {
    vera::optim::slot_state<float> slot;
    slot.parameter = parameter.name;
    slot.steps = metadata_number(file, parameter.name + ".steps");
    slot.first = file.values<float>(parameter.name + ".exp_avg");
    slot.second = file.values<float>(parameter.name + ".exp_avg_sq");
    saved.push_back(std::move(slot));
  }
  optimizer.load_state(saved);
  return metadata_number(file, "step");
}

// ---------------------------------------------------------------------------------------------
// Scaffolding: the two runs and the comparison.

// A directory under the system's temporary directory, removed with everything in it at scope exit.
class temporary_directory {
 public:
  temporary_directory() {
    std::random_device entropy;
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    for (int attempt = 0;; ++attempt) {
      path_ = fs::temp_directory_path() /
              ("vera_custom_trainer_" + std::to_string(now) + "_" + std::to_string(entropy()));
      if (fs::create_directory(path_)) return;
      if (attempt == 10) {
        throw vera::io_error("cannot create a directory under " +
                             fs::temp_directory_path().string());
      }
    }
  }
  temporary_directory(const temporary_directory&) = delete;
  temporary_directory& operator=(const temporary_directory&) = delete;
  ~temporary_directory() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const noexcept { return path_; }

 private:
  fs::path path_;
};

// Batches are a function of the step number alone, so a resumed run sees the same data.
void train(trainer& t, const dataset& data, const settings& s, std::uint64_t first,
           std::uint64_t last, const char* label) {
  const Eigen::Index batches = s.train_rows / s.batch;
  for (std::uint64_t step = first; step < last; ++step) {
    const Eigen::Index row = Eigen::Index(step % std::uint64_t(batches)) * s.batch;
    // Row blocks of the data set go straight in: the expressions take Eigen blocks and maps.
    const float loss =
        t.step(data.x_train.middleRows(row, s.batch), data.y_train.middleRows(row, s.batch));
    if (!std::isfinite(loss)) throw vera::value_error("the training loss is not finite");
    if ((step + 1) % std::uint64_t(s.report_every) == 0) {
      std::printf("  %-11s step %5llu  train loss %.4e\n", label,
                  static_cast<unsigned long long>(step + 1), double(loss));
    }
  }
}

bool same_bits(const vera::io::model_adapter<float>& a, const vera::io::model_adapter<float>& b) {
  for (const auto& [path, layer] : a) {
    const vera::adapter<float>& other = b.at(path);
    if (std::memcmp(layer.lambda_b().data(), other.lambda_b().data(),
                    sizeof(float) * std::size_t(layer.out_features())) != 0 ||
        std::memcmp(layer.lambda_d().data(), other.lambda_d().data(),
                    sizeof(float) * std::size_t(layer.rank())) != 0) {
      std::printf("layer %s: resumed lambdas differ from the uninterrupted run\n", path.c_str());
      return false;
    }
  }
  return true;
}

int run(const settings& s) {
  std::mt19937 rng(2024);
  const base_model base = random_model(rng, s);
  const dataset data = make_task(rng, base, s);
  const vera::io::layer_shapes layers = adapted_layers(base);

  // One projection for all layers, sized by the largest in and out, exactly as PEFT sizes it, so
  // that PEFT regenerates the same A and B from the seed.
  const vera::io::layer_shape largest = vera::io::max_extents(layers);
  const vera::projection<float> shared({/*seed=*/0, s.rank, largest.in, largest.out});

  vera::optim::adamw_options options;
  options.lr = 5e-3;
  options.weight_decay = 0.0;  // decay would pull b, which starts at 0 and must grow, back down

  const auto total = std::uint64_t(s.steps);
  const std::uint64_t half = total / 2;
  std::printf("vera %s custom trainer: 3-layer MLP %ld-%ld-%ld-%ld, shared projection rank %ld\n",
              vera::version_string, long(s.in), long(s.hidden), long(s.hidden), long(s.out),
              long(s.rank));

  // Run 1: uninterrupted.
  vera::io::model_adapter<float> reference(shared, layers);
  float base_loss = 0, final_loss = 0;
  {
    trainer t(base, reference, options);
    base_loss = t.evaluate(data.x_test, data.y_test);
    std::printf("trainable parameters: %ld; test loss of the base model %.4e\n",
                long(reference.trainable_parameters()), double(base_loss));
    train(t, data, s, 0, total, "straight");
    final_loss = t.evaluate(data.x_test, data.y_test);
  }

  // Run 2: stop halfway, save, then continue in objects that share nothing with the first half.
  const temporary_directory scratch;
  const fs::path checkpoint = scratch.path() / "checkpoint";
  {
    vera::io::model_adapter<float> adapters(shared, layers);
    trainer t(base, adapters, options);
    train(t, data, s, 0, half, "first half");
    save_checkpoint(checkpoint, adapters, t.optimizer(), half);
  }
  // The loaded adapter regenerates its projection from the seed in the file; the optimizer must be
  // built over the loaded adapters before its state is restored.
  auto loaded = vera::io::load_peft_adapter<float>(checkpoint / "adapter", layers);
  trainer resumed(base, loaded.model, options);
  const std::uint64_t start = load_checkpoint(checkpoint, resumed.optimizer());
  std::printf("  resumed from %s at step %llu\n", checkpoint.filename().string().c_str(),
              static_cast<unsigned long long>(start));
  train(resumed, data, s, start, total, "resumed");

  std::printf("test loss %.4e -> %.4e\n", double(base_loss), double(final_loss));
  if (!same_bits(reference, loaded.model)) return exit_failure;
  std::printf("resume check: save at step %llu, load, continue to %llu: lambdas bit-identical to "
              "the uninterrupted run\n",
              static_cast<unsigned long long>(half), static_cast<unsigned long long>(total));
  if (!(final_loss < 0.8f * base_loss)) {
    std::printf("custom_trainer: the test loss did not fall as expected\n");
    return exit_failure;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::fputs(usage, stdout);
      return 0;
    }
    if (std::strcmp(argv[i], "--quick") == 0) {
      s.steps = 200;
      s.report_every = 50;
      continue;
    }
    std::fprintf(stderr, "custom_trainer: unknown argument '%s' (see --help)\n", argv[i]);
    return exit_usage;
  }
  try {
    return run(s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "custom_trainer: %s\n", e.what());
    return exit_failure;
  }
}
