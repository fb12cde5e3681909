// SPDX-License-Identifier: Apache-2.0
// Fashion-MNIST: pretrain an MLP on five classes, adapt it to the other five with VeRA, LoRA,
// head-only and full fine-tuning, and compare accuracy against trainable parameters.
//
// Run with --help for the options. Writes a markdown table, CSV files for the plot
// (tools/plot_fashion_mnist.py), a checkpoint of each method's trained tensors, and the VeRA
// adapter in PEFT's format; then merges that adapter and checks merged predictions against
// unmerged ones.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <vera/io.hpp>
#include <vera/optim.hpp>
#include <vera/vera.hpp>

#include "dataset.hpp"
#include "model.hpp"
#include "progress.hpp"

namespace {

namespace fs = std::filesystem;
using namespace fashion;

constexpr int exit_failure = 1;
constexpr int exit_usage = 2;
constexpr int exit_no_data = 77;  // ctest's conventional "skipped"

// Source task: footwear, bag and shirt; target task: the other five garments, where frozen
// features learnt on shoes and bags are clearly not enough.
const std::vector<int> source_classes = {5, 6, 7, 8, 9};
const std::vector<int> target_classes = {0, 1, 2, 3, 4};

struct settings {
  fs::path data = "/usr/share/datasets/fashion-mnist";
  fs::path out = "fashion_mnist_results";
  bool quick = false;
  int epochs = 5;
  int pretrain_epochs = 3;
  Eigen::Index hidden = 256;
  Eigen::Index rank = 1024;
  Eigen::Index batch = 128;
  std::uint64_t seed = 0;
  std::vector<std::string> only;
};

struct method {
  std::string key;
  std::string label;
  mode kind;
  vera::adapter_options vera;
  Eigen::Index lora_rank = 0;
  double lr = 1e-3;       // adapted layers (or all layers for full fine-tuning)
  double head_lr = 1e-3;  // the new classification head
};

struct result {
  method how;
  Eigen::Index trainable = 0;
  double accuracy = 0;
  double seconds = 0;
  std::uintmax_t checkpoint_bytes = 0;
  std::vector<double> curve;   // target test accuracy before training and after each epoch
  std::vector<double> losses;  // mean training loss per epoch
};

const char* const usage = R"(usage: fashion_mnist [options]

Pretrains a 784-H-H-5 MLP on Fashion-MNIST classes 5-9, then adapts it to classes 0-4 with:
head only, VeRA (paper init; b only; d only; d_initial 1e-7), LoRA (r = 1 and 8), full fine-tuning.

  --data DIR          IDX files (plain or .gz) [/usr/share/datasets/fashion-mnist]
  --out DIR           results: results.md, summary.csv, curves.csv, checkpoints/, vera_peft/
                      [fashion_mnist_results]
  --epochs N          adaptation epochs per method [5]
  --pretrain-epochs N epochs on the source task [3]
  --hidden H          hidden width [256]
  --rank R            VeRA rank (one projection shared by both hidden layers) [1024]
  --batch B           batch size [128]
  --seed S            seed for initialisation, shuffling and the projection [0]
  --only K1,K2,...    run only these methods (keys: head, vera, vera_b, vera_d, vera_dinit,
                      lora1, lora8, full)
  --quick             a small, fast run (CI): subsets of the data, 1 epoch, H = 64, R = 128
  --help              this text

Exit codes: 0 success, 1 failure (including a merge check that does not hold), 2 bad usage,
77 dataset not found.
)";

std::vector<method> all_methods() {
  std::vector<method> m;
  vera::adapter_options paper;  // b = 0, d = 0.1
  m.push_back({"head", "head only", mode::frozen, {}, 0, 0.0, 1e-3});
  m.push_back({"vera", "VeRA", mode::vera, paper, 0, 1e-2, 1e-3});
  vera::adapter_options b_only = paper;
  b_only.train_d = false;
  m.push_back({"vera_b", "VeRA, b only", mode::vera, b_only, 0, 1e-2, 1e-3});
  // With b frozen at its usual 0 the update and d's gradient would stay zero: b is frozen at 1
  // and d starts at 0, so training still starts from the base model.
  vera::adapter_options d_only = paper;
  d_only.train_b = false;
  d_only.b_initial = 1.0;
  d_only.d_initial = 0.0;
  m.push_back({"vera_d", "VeRA, d only", mode::vera, d_only, 0, 1e-2, 1e-3});
  vera::adapter_options tiny_d = paper;
  tiny_d.d_initial = 1e-7;
  m.push_back({"vera_dinit", "VeRA, d_initial 1e-7", mode::vera, tiny_d, 0, 1e-2, 1e-3});
  m.push_back({"lora1", "LoRA r=1", mode::lora, {}, 1, 1e-3, 1e-3});
  m.push_back({"lora8", "LoRA r=8", mode::lora, {}, 8, 1e-3, 1e-3});
  m.push_back({"full", "full fine-tuning", mode::full, {}, 0, 3e-4, 1e-3});
  return m;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) items.push_back(item);
  }
  return items;
}

// Parses argv into `s`; returns false (after printing to stderr) on bad usage.
bool parse(int argc, char** argv, settings& s, bool& help) {
  bool epochs_set = false, hidden_set = false, rank_set = false, pretrain_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&](const char* name) -> std::optional<std::string> {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fashion_mnist: %s needs a value\n", name);
        return std::nullopt;
      }
      return std::string(argv[++i]);
    };
    const auto number = [&](const char* name, long low, long& out) {
      const auto text = value(name);
      if (!text) return false;
      char* end = nullptr;
      const long v = std::strtol(text->c_str(), &end, 10);
      if (end == text->c_str() || *end != '\0' || v < low) {
        std::fprintf(stderr, "fashion_mnist: %s expects an integer >= %ld, got '%s'\n", name, low,
                     text->c_str());
        return false;
      }
      out = v;
      return true;
    };
    long v = 0;
    if (arg == "--help" || arg == "-h") {
      help = true;
      return true;
    } else if (arg == "--quick") {
      s.quick = true;
    } else if (arg == "--data" || arg == "--out") {
      const auto text = value(arg.c_str());
      if (!text) return false;
      (arg == "--data" ? s.data : s.out) = *text;
    } else if (arg == "--only") {
      const auto text = value("--only");
      if (!text) return false;
      s.only = split_list(*text);
      for (const auto& key : s.only) {
        const auto methods = all_methods();
        if (std::none_of(methods.begin(), methods.end(), [&](const method& m) { return m.key == key; })) {
          std::fprintf(stderr, "fashion_mnist: --only: unknown method '%s'\n", key.c_str());
          return false;
        }
      }
    } else if (arg == "--epochs") {
      if (!number("--epochs", 1, v)) return false;
      s.epochs = static_cast<int>(v);
      epochs_set = true;
    } else if (arg == "--pretrain-epochs") {
      if (!number("--pretrain-epochs", 1, v)) return false;
      s.pretrain_epochs = static_cast<int>(v);
      pretrain_set = true;
    } else if (arg == "--hidden") {
      if (!number("--hidden", 1, v)) return false;
      s.hidden = v;
      hidden_set = true;
    } else if (arg == "--rank") {
      if (!number("--rank", 1, v)) return false;
      s.rank = v;
      rank_set = true;
    } else if (arg == "--batch") {
      if (!number("--batch", 1, v)) return false;
      s.batch = v;
    } else if (arg == "--seed") {
      if (!number("--seed", 0, v)) return false;
      s.seed = static_cast<std::uint64_t>(v);
    } else {
      std::fprintf(stderr, "fashion_mnist: unknown argument '%s' (see --help)\n", arg.c_str());
      return false;
    }
  }
  if (s.quick) {
    if (!epochs_set) s.epochs = 1;
    if (!pretrain_set) s.pretrain_epochs = 1;
    if (!hidden_set) s.hidden = 64;
    if (!rank_set) s.rank = 128;
  }
  return true;
}

// Cosine decay from lr to 0 over `total` steps.
double cosine(double lr, long step, long total) {
  const double pi = 3.141592653589793;
  return 0.5 * lr * (1.0 + std::cos(pi * static_cast<double>(step) / static_cast<double>(total)));
}

// Trains `net` for `epochs` epochs with AdamW (body and head with their own learning rates,
// cosine schedules); returns the mean loss per epoch and fills `curve` with test accuracy.
std::vector<double> train(mlp& net, const labelled& train_set, const labelled& test_set,
                          const settings& s, int epochs, double body_lr, double head_lr,
                          const std::string& label, std::vector<double>* curve) {
  vera::optim::adamw<float> body({body_lr, 0.9, 0.999, 1e-8, 0.01});
  vera::optim::adamw<float> head({head_lr, 0.9, 0.999, 1e-8, 0.01});
  net.fc1().register_with(body, "fc1");
  net.fc2().register_with(body, "fc2");
  net.head().register_with(head, "head");

  batcher batches(train_set, s.batch, s.seed + 17);
  const long per_epoch = static_cast<long>(batches.batches_per_epoch());
  if (per_epoch == 0) throw vera::value_error("the training set is smaller than one batch");
  const long total = per_epoch * epochs;
  matrix x;
  std::vector<int> y;
  std::vector<double> losses;
  if (curve != nullptr) curve->push_back(accuracy(net, test_set));
  progress bar(label, total);
  long step = 0;
  double last_accuracy = curve != nullptr ? curve->back() : 0.0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    batches.shuffle();
    double loss_sum = 0;
    for (long k = 0; k < per_epoch; ++k, ++step) {
      batches.gather(k, x, y);
      loss_sum += net.train_step(x, y);
      if (!body.parameters().empty()) {
        body.set_lr(cosine(body_lr, step, total));
        body.step();
      }
      head.set_lr(cosine(head_lr, step, total));
      head.step();
      char status[96];
      std::snprintf(status, sizeof status, "epoch %d/%d  loss %.4f", epoch + 1, epochs,
                    loss_sum / static_cast<double>(k + 1));
      bar.update(step + 1, status);
    }
    losses.push_back(loss_sum / static_cast<double>(per_epoch));
    if (curve != nullptr) {
      last_accuracy = accuracy(net, test_set);
      curve->push_back(last_accuracy);
    }
  }
  char status[96];
  std::snprintf(status, sizeof status, "loss %.4f  test accuracy %.2f%%", losses.back(),
                100.0 * (curve != nullptr ? last_accuracy : accuracy(net, test_set)));
  bar.finish(status);
  return losses;
}

// Writes the tensors `opt` trains as float32, one 1-D tensor each; returns the file size.
std::uintmax_t write_checkpoint(const vera::optim::adamw<float>& body,
                                const vera::optim::adamw<float>& head, const fs::path& path) {
  vera::io::safetensors_writer writer;
  for (const auto* opt : {&body, &head}) {
    for (const auto& p : opt->parameters().items()) {
      writer.add(p.name, vera::io::dtype::f32, {static_cast<std::uint64_t>(p.size)}, p.value);
    }
  }
  writer.write(path);
  return fs::file_size(path);
}

std::string format_count(Eigen::Index n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i != 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string format_bytes(std::uintmax_t bytes) {
  char text[32];
  if (bytes >= 1u << 20) {
    std::snprintf(text, sizeof text, "%.2f MiB", static_cast<double>(bytes) / (1 << 20));
  } else {
    std::snprintf(text, sizeof text, "%.1f KiB", static_cast<double>(bytes) / 1024.0);
  }
  return text;
}

std::string table(const std::vector<result>& results) {
  std::ostringstream md;
  md << "| method | trainable parameters | test accuracy | training time | checkpoint |\n"
     << "|---|---:|---:|---:|---:|\n";
  for (const auto& r : results) {
    char acc[16], secs[16];
    std::snprintf(acc, sizeof acc, "%.2f%%", 100.0 * r.accuracy);
    std::snprintf(secs, sizeof secs, "%.1f s", r.seconds);
    md << "| " << r.how.label << " | " << format_count(r.trainable) << " | " << acc << " | " << secs
       << " | " << format_bytes(r.checkpoint_bytes) << " |\n";
  }
  return md.str();
}

linear_weights copy_weights(const layer& l) { return l.weights(); }

mlp build(const method& how, const linear_weights& fc1, const linear_weights& fc2,
          const vera::projection<float>& shared, const settings& s) {
  std::mt19937 rng(static_cast<std::uint32_t>(s.seed + 101));
  linear_weights head = linear_weights::init(s.hidden, static_cast<Eigen::Index>(target_classes.size()), rng);
  layer new_head(std::move(head), mode::full);
  switch (how.kind) {
    case mode::vera:
      return mlp(layer(fc1, shared, how.vera), layer(fc2, shared, how.vera), std::move(new_head));
    case mode::lora:
      return mlp(layer(fc1, how.lora_rank, rng), layer(fc2, how.lora_rank, rng), std::move(new_head));
    case mode::full:
      return mlp(layer(fc1, mode::full), layer(fc2, mode::full), std::move(new_head));
    case mode::frozen:
      break;
  }
  return mlp(layer(fc1, mode::frozen), layer(fc2, mode::frozen), std::move(new_head));
}

// Writes what a PyTorch + PEFT user needs to run the saved adapter (tools/check_fashion_mnist_peft.py
// does): base_model.safetensors with the frozen layers and the trained head (torch's nn.Linear
// names and row-major layout), and check_outputs.safetensors with some test images and the logits
// computed here.
void write_peft_check(const mlp& net, const labelled& test_set, const dense_matrix& logits,
                      const fs::path& out) {
  vera::io::safetensors_writer base;
  const auto add_linear = [&base](const std::string& name, const dense_matrix& w, const vec& b) {
    const matrix row_major = w;  // nn.Linear stores out x in row-major
    base.add(name + ".weight", vera::io::dtype::f32,
             {static_cast<std::uint64_t>(w.rows()), static_cast<std::uint64_t>(w.cols())}, row_major.data());
    base.add(name + ".bias", vera::io::dtype::f32, {static_cast<std::uint64_t>(b.size())}, b.data());
  };
  const auto& fc1 = static_cast<const vera::linear<float>&>(net.fc1_view().vera_layer());
  const auto& fc2 = static_cast<const vera::linear<float>&>(net.fc2_view().vera_layer());
  add_linear("fc1", fc1.weight(), *fc1.bias());
  add_linear("fc2", fc2.weight(), *fc2.bias());
  add_linear("head", net.head_view().weights().w, net.head_view().weights().b);
  base.write(out / "base_model.safetensors");

  const Eigen::Index rows = std::min<Eigen::Index>(64, test_set.size());
  const matrix inputs = test_set.images.topRows(rows);
  const matrix expected = logits.topRows(rows);
  vera::io::safetensors_writer check;
  check.add("inputs", vera::io::dtype::f32,
            {static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(inputs.cols())}, inputs.data());
  check.add("logits", vera::io::dtype::f32,
            {static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(expected.cols())}, expected.data());
  check.write(out / "check_outputs.safetensors");
}

// Saves the VeRA layers of `net` as a PEFT adapter (seed only), reloads it, merges it into the
// frozen weights and compares predictions. Returns false when a check fails.
bool peft_round_trip_and_merge(mlp& net, const vera::projection<float>& shared,
                               const labelled& test_set, const fs::path& dir) {
  const vera::io::layer_shapes shapes = {{"fc1", {fashion::pixels, net.fc1().out_features()}},
                                         {"fc2", {net.fc1().out_features(), net.fc2().out_features()}}};
  const auto& first = static_cast<const vera::linear<float>&>(net.fc1().vera_layer()).vera_adapter();
  vera::io::model_adapter<float> model(shared, shapes, first.options());
  for (const char* name : {"fc1", "fc2"}) {
    const auto& src = static_cast<const vera::linear<float>&>(
                          std::string(name) == "fc1" ? net.fc1().vera_layer() : net.fc2().vera_layer())
                          .vera_adapter();
    model.at(name).set_lambdas(src.lambda_b(), src.lambda_d());
  }
  vera::io::vera_config config;
  config.base_model_name_or_path = "fashion_mnist_mlp";
  vera::io::save_peft_adapter(model, dir, {}, config);
  const auto reloaded = vera::io::load_peft_adapter<float>(dir, shapes);
  bool ok = true;
  for (const auto& [path, ad] : model) {
    const auto& back = reloaded.model.at(path);
    if (back.lambda_b() != ad.lambda_b() || back.lambda_d() != ad.lambda_d()) {
      std::fprintf(stderr, "fashion_mnist: reloaded PEFT adapter differs at %s\n", path.c_str());
      ok = false;
    }
  }
  std::printf("\nVeRA adapter saved in PEFT format: %s (%s, seed-only; reloaded bit-exact: %s)\n",
              dir.string().c_str(), format_bytes(fs::file_size(dir / "adapter_model.safetensors")).c_str(),
              ok ? "yes" : "NO");

  // The unmerged reference runs the low-rank order, so that it shares no arithmetic with merge()
  // (left to itself, the cost model may pick the merged order at this batch size).
  net.fc1().vera_layer().set_order(vera::order::low_rank);
  net.fc2().vera_layer().set_order(vera::order::low_rank);
  float largest_update = 0;
  for (layer* l : {&net.fc1(), &net.fc2()}) {
    const auto& v = static_cast<const vera::linear<float>&>(l->vera_layer());
    const dense_matrix delta = vera::delta_weight(v.vera_adapter());
    largest_update = std::max(largest_update, delta.cwiseAbs().maxCoeff());
  }
  std::printf("largest entry of the learnt update ΔW = Λb B Λd A: %.3g\n", static_cast<double>(largest_update));
  const dense_matrix unmerged = net.predict(test_set.images);
  write_peft_check(net, test_set, unmerged, dir.parent_path());
  net.fc1().vera_layer().merge();
  net.fc2().vera_layer().merge();
  const dense_matrix merged = net.predict(test_set.images);
  net.fc1().vera_layer().unmerge();
  net.fc2().vera_layer().unmerge();
  const dense_matrix restored = net.predict(test_set.images);

  const auto agree = [&](const dense_matrix& a, const dense_matrix& b) {
    Eigen::Index same = 0;
    for (Eigen::Index i = 0; i < a.rows(); ++i) {
      Eigen::Index ia = 0, ib = 0;
      a.row(i).maxCoeff(&ia);
      b.row(i).maxCoeff(&ib);
      same += ia == ib ? 1 : 0;
    }
    return same;
  };
  const float scale = std::max(1.0f, unmerged.cwiseAbs().maxCoeff());
  const float merge_diff = (merged - unmerged).cwiseAbs().maxCoeff();
  const float unmerge_diff = (restored - unmerged).cwiseAbs().maxCoeff();
  std::printf("merged vs unmerged: %ld of %ld test predictions agree, max |logit difference| %.3g "
              "(logits up to %.3g)\n",
              static_cast<long>(agree(merged, unmerged)), static_cast<long>(unmerged.rows()),
              static_cast<double>(merge_diff), static_cast<double>(scale));
  std::printf("after unmerge: max |logit difference| from the unmerged model %.3g\n",
              static_cast<double>(unmerge_diff));
  // Float rounding of W0 + ΔW against the low-rank path: relative 1e-4 is far above it and far
  // below anything a wrong merge would give.
  if (!(merge_diff <= 1e-4f * scale) || !(unmerge_diff <= 1e-4f * scale)) {
    std::fprintf(stderr, "fashion_mnist: merged predictions differ from unmerged ones\n");
    ok = false;
  }
  return ok;
}

int run(const settings& s) {
  dataset data;
  try {
    data = load_fashion_mnist(s.data);
  } catch (const idx_error& e) {
    std::fprintf(stderr,
                 "fashion_mnist: cannot load Fashion-MNIST: %s\n"
                 "  install it with `apt-get install dataset-fashion-mnist`, or pass --data DIR\n",
                 e.what());
    return fs::exists(s.data) ? exit_failure : exit_no_data;
  }
  const std::size_t train_limit = s.quick ? 1500 : 0, test_limit = s.quick ? 500 : 0;
  const labelled source_train = select_classes(data.train, source_classes, train_limit);
  const labelled source_test = select_classes(data.test, source_classes, test_limit);
  const labelled target_train = select_classes(data.train, target_classes, train_limit);
  const labelled target_test = select_classes(data.test, target_classes, test_limit);
  std::printf("Fashion-MNIST from %s: source task (classes 5-9) %ld train / %ld test, target task "
              "(classes 0-4) %ld train / %ld test\n",
              s.data.string().c_str(), static_cast<long>(source_train.size()),
              static_cast<long>(source_test.size()), static_cast<long>(target_train.size()),
              static_cast<long>(target_test.size()));
  std::printf("MLP 784-%ld-%ld-5, ReLU; VeRA rank %ld (one projection for both hidden layers); "
              "batch %ld; seed %llu\n\n",
              static_cast<long>(s.hidden), static_cast<long>(s.hidden), static_cast<long>(s.rank),
              static_cast<long>(s.batch), static_cast<unsigned long long>(s.seed));
  std::fflush(stdout);  // progress bars go to stderr

  // Pretraining on the source task: every layer trained from scratch.
  std::mt19937 rng(static_cast<std::uint32_t>(s.seed));
  mlp base(layer(linear_weights::init(pixels, s.hidden, rng), mode::full),
           layer(linear_weights::init(s.hidden, s.hidden, rng), mode::full),
           layer(linear_weights::init(s.hidden, 5, rng), mode::full));
  train(base, source_train, source_test, s, s.pretrain_epochs, 1e-3, 1e-3, "pretrain (classes 5-9)",
        nullptr);
  const linear_weights fc1 = copy_weights(base.fc1());
  const linear_weights fc2 = copy_weights(base.fc2());

  fs::create_directories(s.out / "checkpoints");
  const vera::projection<float> shared({s.seed, s.rank, pixels, s.hidden});
  std::vector<result> results;
  std::optional<mlp> vera_net;
  for (const method& how : all_methods()) {
    if (!s.only.empty() && std::find(s.only.begin(), s.only.end(), how.key) == s.only.end()) continue;
    mlp net = build(how, fc1, fc2, shared, s);
    result r;
    r.how = how;
    r.trainable = net.trainable();
    progress::clock::time_point start = progress::clock::now();
    r.losses = train(net, target_train, target_test, s, s.epochs, how.lr, how.head_lr, how.label, &r.curve);
    r.seconds = std::chrono::duration<double>(progress::clock::now() - start).count();
    r.accuracy = r.curve.back();
    {
      vera::optim::adamw<float> body, head;
      net.fc1().register_with(body, "fc1");
      net.fc2().register_with(body, "fc2");
      net.head().register_with(head, "head");
      r.checkpoint_bytes = write_checkpoint(body, head, s.out / "checkpoints" / (how.key + ".safetensors"));
    }
    results.push_back(r);
    if (how.key == "vera") vera_net.emplace(std::move(net));
  }

  std::fflush(stderr);
  const std::string md = table(results);
  std::printf("\nTarget task (classes 0-4), %d epochs each:\n\n%s", s.epochs, md.c_str());
  std::ofstream(s.out / "results.md") << md;
  std::ofstream summary(s.out / "summary.csv");
  summary << "key,method,trainable,accuracy,seconds,checkpoint_bytes\n";
  std::ofstream curves(s.out / "curves.csv");
  curves << "key,method,epoch,test_accuracy,train_loss\n";
  for (const auto& r : results) {
    summary << r.how.key << ",\"" << r.how.label << "\"," << r.trainable << ',' << r.accuracy << ','
            << r.seconds << ',' << r.checkpoint_bytes << '\n';
    for (std::size_t e = 0; e < r.curve.size(); ++e) {
      curves << r.how.key << ",\"" << r.how.label << "\"," << e << ',' << r.curve[e] << ','
             << (e == 0 ? std::string() : std::to_string(r.losses[e - 1])) << '\n';
    }
  }
  std::printf("\nWrote %s/{results.md,summary.csv,curves.csv,checkpoints/}\n", s.out.string().c_str());

  if (vera_net && !peft_round_trip_and_merge(*vera_net, shared, target_test, s.out / "vera_peft")) {
    return exit_failure;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  bool help = false;
  if (!parse(argc, argv, s, help)) return exit_usage;
  if (help) {
    std::fputs(usage, stdout);
    return 0;
  }
  try {
    return run(s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
    return exit_failure;
  }
}
