// SPDX-License-Identifier: Apache-2.0
// Fine-tunes all-MiniLM-L6-v2 as a BertForSequenceClassification on a topic task made from
// Debian's fortunes: the classifier head alone, then with it VeRA on every query and value, LoRA on
// the same layers, every weight (full fine-tuning) and VeRA on every linear layer.
// Prints test accuracy and writes the VeRA adapter in PEFT's format with the logits of 64 test
// texts, which tools/check_minilm_peft.py compares with PEFT. Run with --help for the options.
#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <vera/io.hpp>
#include <vera/optim.hpp>
#include <vera/vera.hpp>

#include "../fashion_mnist/progress.hpp"
#include "bert.hpp"
#include "fortunes.hpp"
#include "peft_export.hpp"
#include "plot.hpp"
#include "tokenizer.hpp"
#include "training.hpp"

namespace {

namespace fs = std::filesystem;
using minilm::index;
using minilm::matrix;
using minilm::vec;

constexpr int exit_usage = 2;
constexpr int exit_no_data = 77;  // ctest's conventional "skipped"

// Five topics whose files are large enough for 120 training fortunes each. They overlap in
// vocabulary and style (jokes and quotations, many about computers, science or law at once), so
// neither a head on frozen features nor an adapted encoder gets close to 100%.
const std::vector<std::string> topics = {"computers", "science", "politics", "law", "food"};

struct settings {
  fs::path model = "data/minilm";
  fs::path fortunes = "/usr/share/games/fortunes";
  fs::path out = "minilm_results";
  std::uint64_t seed = 0;
  std::vector<std::uint64_t> seeds = {0};  ///< --seed N or --seeds A,B,C
  std::size_t train_per_topic = 120;
  std::size_t test_per_topic = 40;
  std::size_t max_length = 128;
  std::size_t batch = 16;
  int vera_epochs = 3;
  int head_epochs = 30;
  index rank = 256;
  double vera_lr = 1e-2;
  double head_lr = 5e-3;
  index lora_rank = 8;
  double lora_lr = 1e-3;
  double full_lr = 5e-5;
  std::vector<std::string> methods = {"head", "vera", "lora", "full", "vera-all"};  ///< --methods
  bool quick = false;
  std::vector<fs::path> merge;  ///< --merge: earlier runs' results.md whose rows join this run's
  fs::path check_peft;  ///< with --check-peft: a directory from tools/check_minilm_from_peft.py
};

void usage(const char* program) {
  std::printf(
      "usage: %s [--model DIR] [--fortunes DIR] [--out DIR] [--seed N] [--methods LIST] [--quick]\n"
      "  --model DIR     all-MiniLM-L6-v2 from scripts/fetch-minilm.sh (default data/minilm)\n"
      "  --fortunes DIR  Debian's fortunes files (default /usr/share/games/fortunes)\n"
      "  --out DIR       where the PEFT adapter and check logits go (default minilm_results)\n"
      "  --seed N        head initialisation, LoRA's A and batch order (default 0)\n"
      "  --seeds A,B,..  every method for each seed (outputs under DIR/seedN); the table and\n"
      "                  plot (DIR/results.md, DIR/accuracy.png) show them all\n"
      "  --methods LIST  comma-separated, from head,vera,lora,full,vera-all (default: all):\n"
      "                  head only, VeRA(q,v), LoRA(q,v), full fine-tuning, VeRA on every linear\n"
      "                  layer; each with the head\n"
      "  --merge FILE    add the per-seed rows of an earlier run's results.md (methods this run\n"
      "                  does not run) to the table and plot, marked as merged; repeatable, and\n"
      "                  with --methods '' (none) it only redraws the table and plot\n"
      "  --quick         16 training fortunes per topic, one epoch: a smoke run\n"
      "  --check-peft DIR  no training: load DIR/peft_adapter (trained by PEFT), run the texts of\n"
      "                  DIR/check_logits.json and compare with PEFT's logits there (exit 1 above 1e-4)\n",
      program);
}

settings parse(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(exit_usage);
      }
      return argv[++i];
    };
    if (arg == "--model") {
      s.model = value();
    } else if (arg == "--fortunes") {
      s.fortunes = value();
    } else if (arg == "--out") {
      s.out = value();
    } else if (arg == "--seed") {
      s.seeds = {std::stoull(value())};
    } else if (arg == "--seeds") {
      s.seeds.clear();
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) s.seeds.push_back(std::stoull(item));
      if (s.seeds.empty()) {
        std::fprintf(stderr, "--seeds needs at least one seed\n");
        std::exit(exit_usage);
      }
    } else if (arg == "--methods") {
      s.methods.clear();
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) {
        if (item != "head" && item != "vera" && item != "lora" && item != "full" && item != "vera-all") {
          std::fprintf(stderr, "--methods: unknown method '%s' (head, vera, lora, full, vera-all)\n", item.c_str());
          std::exit(exit_usage);
        }
        s.methods.push_back(item);
      }
    } else if (arg == "--merge") {
      s.merge.push_back(value());
    } else if (arg == "--quick") {
      s.quick = true;
    } else if (arg == "--check-peft") {
      s.check_peft = value();
    } else if (arg == "--help" || arg == "-h") {
      usage(argv[0]);
      std::exit(0);
    } else {
      usage(argv[0]);
      std::exit(exit_usage);
    }
  }
  if (s.quick) {
    s.train_per_topic = 16;
    s.test_per_topic = 8;
    s.vera_epochs = 1;
    s.head_epochs = 3;
  }
  return s;
}

/// \brief The texts and labels of `examples[rows]`.
struct batch_view {
  std::vector<std::string> texts;
  std::vector<int> labels;
};

batch_view gather(const std::vector<minilm::labelled_text>& examples, const std::vector<std::size_t>& rows) {
  batch_view b;
  for (const std::size_t i : rows) {
    b.texts.push_back(examples[i].text);
    b.labels.push_back(examples[i].label);
  }
  return b;
}

/// \brief One epoch's batches: a shuffle, then texts of similar length grouped within windows of
///        eight batches (a batch is padded to its longest text, and fortunes range from a few
///        tokens to far past 128), then the batches shuffled again.
std::vector<std::vector<std::size_t>> epoch_batches(const std::vector<minilm::labelled_text>& examples,
                                                    std::size_t batch, std::mt19937& engine) {
  std::vector<std::size_t> order(examples.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::shuffle(order.begin(), order.end(), engine);
  const std::size_t window = 8 * batch;
  for (std::size_t first = 0; first < order.size(); first += window) {
    const auto begin = order.begin() + static_cast<std::ptrdiff_t>(first);
    const auto end = order.begin() + static_cast<std::ptrdiff_t>(std::min(first + window, order.size()));
    std::stable_sort(begin, end, [&](std::size_t a, std::size_t b) {
      return examples[a].text.size() < examples[b].text.size();
    });
  }
  std::vector<std::vector<std::size_t>> batches;
  for (std::size_t first = 0; first < order.size(); first += batch)
    batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(first),
                         order.begin() + static_cast<std::ptrdiff_t>(std::min(first + batch, order.size())));
  std::shuffle(batches.begin(), batches.end(), engine);
  return batches;
}

std::vector<std::string> texts_of(const std::vector<minilm::labelled_text>& examples) {
  std::vector<std::string> out;
  for (const auto& e : examples) out.push_back(e.text);
  return out;
}

/// \brief Indices of `texts` from shortest to longest, so that inference batches pad little.
std::vector<std::size_t> by_length(const std::vector<std::string>& texts) {
  std::vector<std::size_t> order(texts.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return texts[a].size() < texts[b].size(); });
  return order;
}

/// \brief transformers' initialisation of a new classifier: weight ~ N(0, 0.02), bias 0.
minilm::linear_weights fresh_head(index labels, index hidden, std::uint64_t seed) {
  std::mt19937 engine(static_cast<std::uint32_t>(seed));
  std::normal_distribution<float> normal(0.0f, 0.02f);
  minilm::linear_weights head{matrix(labels, hidden), vec::Zero(labels)};
  for (index i = 0; i < head.weight.size(); ++i) head.weight.data()[i] = normal(engine);
  return head;
}

/// \brief Linear decay from the base rate to zero over `total` steps.
double decayed(double lr, long step, long total) {
  return lr * (1.0 - static_cast<double>(step) / static_cast<double>(total));
}

/// \brief Registers the head's weight (with decay) and bias (without) with `optimizer`.
void add_head(vera::optim::adamw<float>& optimizer, minilm::linear_weights& head,
              minilm::classifier_gradients<float>& grads) {
  grads.head_weight = matrix::Zero(head.weight.rows(), head.weight.cols());
  grads.head_bias = vec::Zero(head.bias.size());
  optimizer.add("classifier.weight", head.weight, grads.head_weight);
  optimizer.add("classifier.bias", head.bias, grads.head_bias, /*decay=*/false);
}

std::vector<std::size_t> shuffled(std::size_t n, std::mt19937& engine) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::shuffle(order.begin(), order.end(), engine);
  return order;
}

/// \brief Logits of `texts` (rows in order), in batches, with the given adapters (none: empty).
matrix predict(const minilm::bert_classifier& model, const minilm::wordpiece_tokenizer& tokenizer,
               const std::vector<minilm::attention_adapters<float>>& adapters,
               const std::vector<std::string>& texts, const settings& s) {
  matrix logits(static_cast<index>(texts.size()), model.classifier().weight.rows());
  minilm::bert_workspace ws;
  const auto order = by_length(texts);
  for (std::size_t first = 0; first < texts.size(); first += s.batch) {
    const std::size_t last = std::min(first + s.batch, texts.size());
    std::vector<std::string> part;
    for (std::size_t i = first; i < last; ++i) part.push_back(texts[order[i]]);
    const matrix& out = model.forward(tokenizer.encode_batch(part, s.max_length), ws, adapters, minilm::pass::evaluate);
    for (std::size_t i = first; i < last; ++i)
      logits.row(static_cast<index>(order[i])) = out.row(static_cast<index>(i - first));
  }
  return logits;
}

double accuracy(const matrix& logits, const std::vector<minilm::labelled_text>& examples) {
  std::size_t right = 0;
  for (index r = 0; r < logits.rows(); ++r) {
    index best = 0;
    logits.row(r).maxCoeff(&best);
    right += best == examples[static_cast<std::size_t>(r)].label ? 1 : 0;
  }
  return static_cast<double>(right) / static_cast<double>(logits.rows());
}

/// \brief What a training run gives: test accuracy and the mean wall-clock seconds of a training
///        step (forward, backward, optimizer; 0 where the steps are not timed).
struct outcome {
  double accuracy = 0, step_seconds = 0;
};

/// \brief Head only: the encoder is frozen, so the pooled features are computed once and the
///        head is trained on them for many epochs. Returns test accuracy.
outcome train_head_only(const minilm::bert_encoder& encoder, const minilm::wordpiece_tokenizer& tokenizer,
                       const minilm::topic_split& data, const settings& s) {
  const index labels = static_cast<index>(data.topics.size()), hidden = encoder.config().hidden_size;
  minilm::bert_classifier model(encoder, fresh_head(labels, hidden, s.seed));
  const auto features = [&](const std::vector<minilm::labelled_text>& examples, const char* label) {
    fashion::progress bar(label, static_cast<long>(examples.size()));
    matrix pooled(static_cast<index>(examples.size()), hidden);
    minilm::bert_workspace ws;
    const auto order = by_length(texts_of(examples));
    for (std::size_t first = 0; first < examples.size(); first += s.batch) {
      const std::size_t last = std::min(first + s.batch, examples.size());
      std::vector<std::string> part;
      for (std::size_t i = first; i < last; ++i) part.push_back(examples[order[i]].text);
      model.encoder().forward(tokenizer.encode_batch(part, s.max_length), ws);
      for (std::size_t i = first; i < last; ++i)
        pooled.row(static_cast<index>(order[i])) = ws.pooled.row(static_cast<index>(i - first));
      bar.update(static_cast<long>(last), "");
    }
    bar.finish(std::to_string(examples.size()) + " texts");
    return pooled;
  };
  const matrix train_pooled = features(data.train, "head only: features");
  const matrix test_pooled = features(data.test, "head only: test features");

  minilm::classifier_gradients<float> grads;
  vera::optim::adamw<float> optimizer({s.head_lr, 0.9, 0.999, 1e-8, 0.01});
  add_head(optimizer, model.classifier(), grads);
  std::mt19937 engine(static_cast<std::uint32_t>(s.seed));
  const long steps_per_epoch = static_cast<long>((data.train.size() + s.batch - 1) / s.batch);
  const long total = steps_per_epoch * s.head_epochs;
  long step = 0;
  fashion::progress bar("head only: train", total);
  matrix pooled, logits, d_logits;
  float loss = 0;
  for (int epoch = 0; epoch < s.head_epochs; ++epoch) {
    const auto order = shuffled(data.train.size(), engine);
    for (std::size_t first = 0; first < order.size(); first += s.batch, ++step) {
      const std::size_t last = std::min(first + s.batch, order.size());
      pooled.resize(static_cast<index>(last - first), hidden);
      std::vector<int> batch_labels;
      for (std::size_t i = first; i < last; ++i) {
        pooled.row(static_cast<index>(i - first)) = train_pooled.row(static_cast<index>(order[i]));
        batch_labels.push_back(data.train[order[i]].label);
      }
      model.classifier().forward(pooled, logits);
      loss = minilm::cross_entropy(logits, batch_labels, d_logits);
      grads.head_weight.noalias() = d_logits.transpose() * pooled;
      grads.head_bias = d_logits.colwise().sum().transpose();
      optimizer.set_lr(decayed(s.head_lr, step, total));
      optimizer.step();
      bar.update(step + 1, "loss " + std::to_string(loss));
    }
  }
  bar.finish("loss " + std::to_string(loss));
  model.classifier().forward(test_pooled, logits);
  return {accuracy(logits, data.test), 0.0};
}

/// \brief The adapter in PEFT's format (save_classifier_adapter) and the logits of 64 test texts
///        for tools/check_minilm_peft.py.
void save_for_peft(const vera::io::model_adapter<float>& adapters, const minilm::bert_classifier& model,
                   const minilm::wordpiece_tokenizer& tokenizer, const minilm::topic_split& data,
                   const settings& s) {
  const fs::path adapter_dir = s.out / "vera_adapter";
  minilm::save_classifier_adapter(adapters, model.classifier(), adapter_dir);

  // 64 test texts spread over every topic.
  std::vector<std::string> texts;
  const std::size_t count = std::min<std::size_t>(64, data.test.size());
  for (std::size_t i = 0; i < count; ++i) texts.push_back(data.test[i * data.test.size() / count].text);
  const matrix logits =
      predict(model, tokenizer, minilm::attention_adapters_of(adapters, model.encoder().config().layers), texts, s);
  nlohmann::json check;
  check["topics"] = data.topics;
  check["max_length"] = s.max_length;
  check["texts"] = texts;
  for (index r = 0; r < logits.rows(); ++r) {
    std::vector<float> row;
    for (index c = 0; c < logits.cols(); ++c) row.push_back(logits(r, c));
    check["logits"].push_back(row);
  }
  std::ofstream(s.out / "check_logits.json") << check.dump(1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::printf("PEFT adapter: %s; logits of %zu test texts: %s\n", adapter_dir.string().c_str(), texts.size(),
              (s.out / "check_logits.json").string().c_str());
}

/// \brief Trains the head and what `per_layer` adapts, or with `full` every encoder weight
///        (optimizer `body`, base rate `body_lr`), for s.vera_epochs epochs with linear decay.
outcome train_adapted(minilm::bert_classifier& model, const std::vector<minilm::attention_adapters<float>>& per_layer,
                      minilm::classifier_gradients<float>& grads, minilm::encoder_gradients<float>* full,
                      vera::optim::adamw<float>& body, double body_lr, vera::optim::adamw<float>& head,
                      const char* label, const minilm::wordpiece_tokenizer& tokenizer, const minilm::topic_split& data,
                      const settings& s) {
  std::mt19937 engine(static_cast<std::uint32_t>(s.seed));
  const long steps_per_epoch = static_cast<long>((data.train.size() + s.batch - 1) / s.batch);
  const long total = steps_per_epoch * s.vera_epochs;
  long step = 0;
  fashion::progress bar(label, total);
  minilm::bert_workspace ws;
  minilm::backward_workspace<float> bws;
  matrix d_logits;
  float loss = 0, smoothed = 0;
  const auto start = fashion::progress::clock::now();
  for (int epoch = 0; epoch < s.vera_epochs; ++epoch) {
    for (const auto& rows : epoch_batches(data.train, s.batch, engine)) {
      const batch_view b = gather(data.train, rows);
      const minilm::token_batch tokens = tokenizer.encode_batch(b.texts, s.max_length);
      const matrix& logits =
          model.forward(tokens, ws, per_layer, full != nullptr ? minilm::pass::train_weights : minilm::pass::train);
      loss = minilm::cross_entropy(logits, b.labels, d_logits);
      smoothed = step == 0 ? loss : 0.9f * smoothed + 0.1f * loss;
      if (full != nullptr) {
        minilm::backward_full(model, tokens, ws, d_logits, grads, *full, bws);
      } else {
        minilm::backward(model, per_layer, ws, d_logits, grads, bws);
      }
      body.set_lr(decayed(body_lr, step, total));
      head.set_lr(decayed(s.head_lr, step, total));
      body.step();
      head.step();
      bar.update(++step, "loss " + std::to_string(smoothed));
    }
  }
  const double seconds = std::chrono::duration<double>(fashion::progress::clock::now() - start).count();
  bar.finish("loss " + std::to_string(smoothed) + ", " + std::to_string(seconds / static_cast<double>(total)) +
             " s per step");
  return {accuracy(predict(model, tokenizer, per_layer, texts_of(data.test), s), data.test),
          seconds / static_cast<double>(total)};
}

/// \brief Gives every adapter of `adapters` (whichever of each layer's linear_modules it adapts) a
///        zero gradient in `grads` and registers the pair with `body` under its module path.
void add_vera_adapters(vera::optim::adamw<float>& body, vera::io::model_adapter<float>& adapters,
                       minilm::classifier_gradients<float>& grads, index layers) {
  grads.layers.resize(static_cast<std::size_t>(layers));
  for (index i = 0; i < layers; ++i) {
    auto& g = grads.layers[static_cast<std::size_t>(i)];
    const std::array<vera::gradients<float>*, 6> slots = {&g.query, &g.key, &g.value, &g.attention_output,
                                                          &g.intermediate, &g.output};
    for (std::size_t m = 0; m < slots.size(); ++m) {
      const std::string path = minilm::layer_module_path(i, minilm::linear_modules[m]);
      if (!adapters.contains(path)) continue;
      auto& ad = adapters.at(path);
      *slots[m] = vera::gradients<float>(ad);
      body.add(path, ad, *slots[m]);
    }
  }
}

/// \brief VeRA (rank s.rank, PEFT's projection from key 0) on every query and value, trained
///        with the head. Returns test accuracy; saves the adapter for PEFT.
outcome train_vera(const minilm::bert_encoder& encoder, const minilm::wordpiece_tokenizer& tokenizer,
                  const minilm::topic_split& data, const settings& s) {
  const auto& config = encoder.config();
  const auto labels = static_cast<index>(data.topics.size());
  minilm::bert_classifier model(encoder, fresh_head(labels, config.hidden_size, s.seed));
  auto adapters = minilm::query_value_adapters<float>(config, s.rank, /*projection_prng_key=*/0);
  const auto per_layer = minilm::attention_adapters_of(adapters, config.layers);

  minilm::classifier_gradients<float> grads;
  vera::optim::adamw<float> body({s.vera_lr, 0.9, 0.999, 1e-8, 0.0});
  add_vera_adapters(body, adapters, grads, config.layers);
  vera::optim::adamw<float> head({s.head_lr, 0.9, 0.999, 1e-8, 0.01});
  add_head(head, model.classifier(), grads);

  const outcome result = train_adapted(model, per_layer, grads, nullptr, body, s.vera_lr, head,
                                       "VeRA(q,v) + head: train", tokenizer, data, s);
  save_for_peft(adapters, model, tokenizer, data, s);
  return result;
}

/// \brief LoRA (rank s.lora_rank, lora_alpha = rank: scale 1) on every query and value with
///        PEFT's initialisation (A Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)),
///        from the seed; B = 0), trained with the head as VeRA is. Returns test accuracy.
outcome train_lora(const minilm::bert_encoder& encoder, const minilm::wordpiece_tokenizer& tokenizer,
                  const minilm::topic_split& data, const settings& s) {
  const auto& config = encoder.config();
  const index hidden = config.hidden_size;
  minilm::bert_classifier model(encoder, fresh_head(static_cast<index>(data.topics.size()), hidden, s.seed));
  std::mt19937 engine(static_cast<std::uint32_t>(s.seed) + 1000u);
  const float bound = 1.0f / std::sqrt(static_cast<float>(hidden));
  std::uniform_real_distribution<float> uniform(-bound, bound);
  std::vector<minilm::lora_adapter<float>> loras(static_cast<std::size_t>(2 * config.layers));
  for (auto& lora : loras) {
    lora.a.resize(s.lora_rank, hidden);
    for (index i = 0; i < lora.a.size(); ++i) lora.a.data()[i] = uniform(engine);
    lora.b = matrix::Zero(hidden, s.lora_rank);
    lora.scale = 1.0f;
  }
  std::vector<minilm::attention_adapters<float>> per_layer(static_cast<std::size_t>(config.layers));
  minilm::classifier_gradients<float> grads;
  grads.layers.resize(per_layer.size());
  vera::optim::adamw<float> body({s.lora_lr, 0.9, 0.999, 1e-8, 0.0});
  for (std::size_t i = 0; i < per_layer.size(); ++i) {
    auto& g = grads.layers[i];
    for (int which = 0; which < 2; ++which) {
      auto& lora = loras[2 * i + static_cast<std::size_t>(which)];
      auto& lg = which == 0 ? g.lora_query : g.lora_value;
      (which == 0 ? per_layer[i].lora_query : per_layer[i].lora_value) = &lora;
      lg.a = matrix::Zero(lora.a.rows(), lora.a.cols());
      lg.b = matrix::Zero(lora.b.rows(), lora.b.cols());
      const std::string path = minilm::attention_path(static_cast<index>(i), which == 0 ? "query" : "value");
      body.add(path + ".lora_A", lora.a, lg.a);
      body.add(path + ".lora_B", lora.b, lg.b);
    }
  }
  vera::optim::adamw<float> head({s.head_lr, 0.9, 0.999, 1e-8, 0.01});
  add_head(head, model.classifier(), grads);
  return train_adapted(model, per_layer, grads, nullptr, body, s.lora_lr, head, "LoRA(q,v) + head: train", tokenizer,
                       data, s);
}

/// \brief Registers a linear layer's weight (with decay) and bias (without) under `path`.
void add_linear(vera::optim::adamw<float>& optimizer, const std::string& path, minilm::linear_weights& w,
                minilm::linear_weights& g) {
  optimizer.add(path + ".weight", w.weight, g.weight);
  optimizer.add(path + ".bias", w.bias, g.bias, /*decay=*/false);
}

/// \brief Registers a LayerNorm's gain and shift, without decay (as transformers' Trainer).
void add_norm(vera::optim::adamw<float>& optimizer, const std::string& path, minilm::basic_norm_weights<float>& w,
              minilm::basic_norm_weights<float>& g) {
  optimizer.add(path + ".weight", w.gamma, g.gamma, /*decay=*/false);
  optimizer.add(path + ".bias", w.beta, g.beta, /*decay=*/false);
}

/// \brief Every weight of the encoder: embeddings, LayerNorms, linear layers, pooler.
index encoder_parameters(const minilm::bert_encoder& encoder) {
  const auto linear = [](const minilm::linear_weights& w) { return w.weight.size() + w.bias.size(); };
  const auto norm = [](const minilm::basic_norm_weights<float>& w) { return w.gamma.size() + w.beta.size(); };
  const auto& e = encoder.embeddings();
  index count = e.word.size() + e.position.size() + e.token_type.size() + norm(e.norm) + linear(encoder.pooler());
  for (const auto& w : encoder.layers())
    count += linear(w.query) + linear(w.key) + linear(w.value) + linear(w.attention_output) +
             norm(w.attention_norm) + linear(w.intermediate) + linear(w.output) + norm(w.output_norm);
  return count;
}

/// \brief Full fine-tuning: every encoder weight (the word, position and token-type embeddings,
///        every LayerNorm, linear layer and the pooler) with AdamW at transformers' Trainer defaults
///        (lr s.full_lr = 5e-5, betas 0.9/0.999, eps 1e-8, linear decay to 0 without warmup) and
///        weight decay 0.01 except on biases and LayerNorms; the new head keeps the head recipe of
///        the other methods (lr 5e-3) so that the comparison changes only what the encoder learns.
outcome train_full(const minilm::bert_encoder& encoder, const minilm::wordpiece_tokenizer& tokenizer,
                   const minilm::topic_split& data, const settings& s) {
  const auto& config = encoder.config();
  minilm::bert_classifier model(encoder, fresh_head(static_cast<index>(data.topics.size()), config.hidden_size, s.seed));
  auto& trained = model.encoder();
  minilm::encoder_gradients<float> weights(trained);
  vera::optim::adamw<float> body({s.full_lr, 0.9, 0.999, 1e-8, 0.01});
  auto& e = trained.embeddings();
  body.add("bert.embeddings.word_embeddings.weight", e.word, weights.embeddings.word);
  body.add("bert.embeddings.position_embeddings.weight", e.position, weights.embeddings.position);
  body.add("bert.embeddings.token_type_embeddings.weight", e.token_type, weights.embeddings.token_type);
  add_norm(body, "bert.embeddings.LayerNorm", e.norm, weights.embeddings.norm);
  for (index i = 0; i < config.layers; ++i) {
    auto& w = trained.layers()[static_cast<std::size_t>(i)];
    auto& g = weights.layers[static_cast<std::size_t>(i)];
    const auto path = [&](const char* module) { return minilm::layer_module_path(i, module); };
    add_linear(body, path("attention.self.query"), w.query, g.query);
    add_linear(body, path("attention.self.key"), w.key, g.key);
    add_linear(body, path("attention.self.value"), w.value, g.value);
    add_linear(body, path("attention.output.dense"), w.attention_output, g.attention_output);
    add_norm(body, path("attention.output.LayerNorm"), w.attention_norm, g.attention_norm);
    add_linear(body, path("intermediate.dense"), w.intermediate, g.intermediate);
    add_linear(body, path("output.dense"), w.output, g.output);
    add_norm(body, path("output.LayerNorm"), w.output_norm, g.output_norm);
  }
  add_linear(body, "bert.pooler.dense", trained.pooler(), weights.pooler);
  minilm::classifier_gradients<float> grads;
  vera::optim::adamw<float> head({s.head_lr, 0.9, 0.999, 1e-8, 0.01});
  add_head(head, model.classifier(), grads);
  return train_adapted(model, {}, grads, &weights, body, s.full_lr, head, "full fine-tuning + head: train", tokenizer,
                       data, s);
}

/// \brief VeRA on all six linear layers of every encoder layer (query, key and value as one
///        sibling group), rank s.rank on one projection from PEFT's key 0 sized to the largest
///        layer (rank x 1536, 1536 x rank), trained as VeRA(q, v) is. Returns test accuracy.
outcome train_vera_all(const minilm::bert_encoder& encoder, const minilm::wordpiece_tokenizer& tokenizer,
                       const minilm::topic_split& data, const settings& s) {
  const auto& config = encoder.config();
  minilm::bert_classifier model(encoder, fresh_head(static_cast<index>(data.topics.size()), config.hidden_size, s.seed));
  auto adapters = minilm::all_linear_adapters<float>(config, s.rank, /*projection_prng_key=*/0);
  const auto per_layer = minilm::attention_adapters_of(adapters, config.layers);
  minilm::classifier_gradients<float> grads;
  vera::optim::adamw<float> body({s.vera_lr, 0.9, 0.999, 1e-8, 0.0});
  add_vera_adapters(body, adapters, grads, config.layers);
  vera::optim::adamw<float> head({s.head_lr, 0.9, 0.999, 1e-8, 0.01});
  add_head(head, model.classifier(), grads);
  return train_adapted(model, per_layer, grads, nullptr, body, s.vera_lr, head, "VeRA(all linear) + head: train",
                       tokenizer, data, s);
}

/// \brief One method's outcome for one seed.
struct method_result {
  std::string name, short_name;
  std::uint64_t seed = 0;
  index parameters = 0;
  double accuracy = 0, seconds = 0, step_seconds = 0;
  bool merged = false;  ///< read from an earlier run's table (--merge)
};

/// \brief The methods in s.methods for seed s.seed (the VeRA(q, v) adapter saved into s.out).
std::vector<method_result> run_methods(const minilm::bert_encoder& encoder, const minilm::wordpiece_tokenizer& tokenizer,
                                       const minilm::topic_split& data, const settings& s) {
  const auto& config = encoder.config();
  const index hidden = config.hidden_size, layers = config.layers, inner = config.intermediate_size;
  const index head_params = static_cast<index>(data.topics.size()) * (hidden + 1);
  std::vector<method_result> out;
  const auto run = [&](const std::string& method, auto&& train, std::string name, std::string short_name,
                       index parameters) {
    if (std::find(s.methods.begin(), s.methods.end(), method) == s.methods.end()) return;
    const auto start = fashion::progress::clock::now();
    const outcome result = train(encoder, tokenizer, data, s);
    const double seconds = std::chrono::duration<double>(fashion::progress::clock::now() - start).count();
    out.push_back({std::move(name), std::move(short_name), s.seed, parameters, result.accuracy, seconds,
                   result.step_seconds});
  };
  const std::string rank = std::to_string(s.rank);
  run("head", train_head_only, "head only", "HEAD ONLY", head_params);
  run("vera", train_vera, "VeRA(q,v) r=" + rank + " + head", "VERA R=" + rank,
      2 * layers * (hidden + s.rank) + head_params);
  run("lora", train_lora, "LoRA(q,v) r=" + std::to_string(s.lora_rank) + " + head",
      "LORA R=" + std::to_string(s.lora_rank), 2 * layers * s.lora_rank * 2 * hidden + head_params);
  run("full", train_full, "full fine-tuning + head", "FULL", encoder_parameters(encoder) + head_params);
  // b has the layer's out entries and d the rank's: four hidden-wide layers, intermediate, output.
  run("vera-all", train_vera_all, "VeRA(all linear) r=" + rank + " + head", "VERA ALL",
      layers * (5 * hidden + inner + 6 * s.rank) + head_params);
  return out;
}

/// \brief The plot's label for a method's table name (as run_methods names them).
std::string short_name_of(const std::string& name) {
  const auto starts = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
  if (starts("head only")) return "HEAD ONLY";
  if (starts("full fine-tuning")) return "FULL";
  if (starts("VeRA(all linear)")) return "VERA ALL";
  const auto r = name.find("r=");
  const std::string rank = r == std::string::npos ? "" : " R=" + name.substr(r + 2, name.find(' ', r) - r - 2);
  if (starts("VeRA")) return "VERA" + rank;
  if (starts("LoRA")) return "LORA" + rank;
  std::string label = name;
  for (char& c : label) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return label;
}

/// \brief The per-seed rows of a results.md this program wrote (its first table), for --merge:
///        method, seed, parameters, accuracy, seconds and, when the table has it, seconds per step.
/// \throws vera::format_error naming the file when a row does not parse.
std::vector<method_result> read_results(const fs::path& path) {
  std::istringstream in(vera::io::read_text_file(path, std::size_t{1} << 20));
  std::vector<method_result> out;
  bool in_table = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("| method | seed |", 0) == 0) {
      in_table = true;
      continue;
    }
    if (!in_table || line.rfind("|---", 0) == 0) continue;
    if (line.empty() || line[0] != '|') break;
    std::vector<std::string> cells;
    std::stringstream row(line.substr(1));
    for (std::string cell; std::getline(row, cell, '|');) {
      const auto first = cell.find_first_not_of(' '), last = cell.find_last_not_of(' ');
      cells.push_back(first == std::string::npos ? "" : cell.substr(first, last - first + 1));
    }
    try {
      method_result r;
      r.name = cells.at(0) + " (merged)";
      r.merged = true;
      r.short_name = short_name_of(cells.at(0));
      r.seed = std::stoull(cells.at(1));
      r.parameters = static_cast<index>(std::stoll(cells.at(2)));
      r.accuracy = std::stod(cells.at(3));
      r.seconds = std::stod(cells.at(4));
      if (cells.size() > 5 && cells[5] != "-" && !cells[5].empty()) r.step_seconds = std::stod(cells[5]);
      out.push_back(r);
    } catch (const std::exception&) {
      throw vera::format_error(path.string() + ": cannot read the row '" + line + "'");
    }
  }
  if (out.empty()) throw vera::format_error(path.string() + ": no per-seed rows (| method | seed | ...)");
  return out;
}

/// \brief Markdown: one row per method and seed, then (several seeds) mean, min and max.
std::string results_table(const std::vector<method_result>& results, std::size_t seeds) {
  std::string table =
      "| method | seed | trained parameters | test accuracy | seconds | seconds per training step |\n"
      "|---|---:|---:|---:|---:|---:|\n";
  char row[256];
  for (const auto& r : results) {
    char step[32] = "-";
    if (r.step_seconds > 0) std::snprintf(step, sizeof step, "%.2f", r.step_seconds);
    std::snprintf(row, sizeof row, "| %s | %llu | %ld | %.4f | %.0f | %s |\n", r.name.c_str(),
                  static_cast<unsigned long long>(r.seed), static_cast<long>(r.parameters), r.accuracy, r.seconds,
                  step);
    table += row;
  }
  if (seeds < 2) return table;
  table += "\n| method | trained parameters | test accuracy, mean (min-max) over " + std::to_string(seeds) +
           " seeds |\n|---|---:|---:|\n";
  std::vector<std::string> names;
  for (const auto& r : results)
    if (std::find(names.begin(), names.end(), r.name) == names.end()) names.push_back(r.name);
  for (const auto& name : names) {
    double sum = 0, low = 1, high = 0;
    std::size_t count = 0;
    index parameters = 0;
    for (const auto& r : results) {
      if (r.name != name) continue;
      sum += r.accuracy;
      low = std::min(low, r.accuracy);
      high = std::max(high, r.accuracy);
      parameters = r.parameters;
      ++count;
    }
    std::snprintf(row, sizeof row, "| %s | %ld | %.4f (%.4f-%.4f) |\n", name.c_str(), static_cast<long>(parameters),
                  sum / static_cast<double>(count), low, high);
    table += row;
  }
  return table;
}

/// \brief Loads a VeRA adapter that PEFT trained on all-MiniLM-L6-v2 (query and value; the
///        classifier under modules_to_save) with vera::io, runs the texts PEFT ran and compares
///        the logits. Returns the exit status: 0 within 1e-4 (max abs difference / max abs logit).
int check_peft_adapter(const settings& s) {
  const nlohmann::json check =
      nlohmann::json::parse(vera::io::read_text_file(s.check_peft / "check_logits.json", std::size_t{1} << 26));
  const fs::path adapter_dir = s.check_peft / "peft_adapter";
  const vera::io::safetensors_file weights(adapter_dir / vera::io::adapter_weights_file);
  const auto config = vera::io::vera_config::read(adapter_dir);
  auto encoder = minilm::bert_classifier::load_encoder(s.model);
  const index hidden = encoder.config().hidden_size;
  // The checkpoint is a BertModel (no "bert." prefix), so the shapes come from the config:
  // every query and value is hidden x hidden.
  vera::io::layer_shapes shapes;
  const auto ends_with = [](const std::string& text, const std::string& tail) {
    return text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const std::string& path : vera::io::peft_layer_paths(weights)) {
    if (!ends_with(path, ".attention.self.query") && !ends_with(path, ".attention.self.value")) throw vera::format_error(adapter_dir.string() + ": adapted layer " + path + " is not a query or value");
    shapes[path] = {hidden, hidden};
  }
  auto loaded = vera::io::load_peft_adapter<float>(config, weights, shapes);
  const auto* weight = loaded.find_trained("classifier.weight");
  const auto* bias = loaded.find_trained("classifier.bias");
  if (weight == nullptr || bias == nullptr)
    throw vera::format_error(adapter_dir.string() + ": no classifier under modules_to_save");
  const std::vector<float> w = weight->values<float>(), b = bias->values<float>();
  const auto labels = static_cast<index>(b.size());
  minilm::linear_weights head{Eigen::Map<const vera::row_matrix<float>>(w.data(), labels, hidden),
                              Eigen::Map<const vec>(b.data(), labels)};
  const minilm::bert_classifier model(std::move(encoder), std::move(head));

  settings run = s;
  run.max_length = check.at("max_length").get<std::size_t>();
  const auto texts = check.at("texts").get<std::vector<std::string>>();
  const index layers = model.encoder().config().layers;
  const auto tokenizer = minilm::wordpiece_tokenizer::from_file(s.model / "tokenizer.json");
  const matrix logits = predict(model, tokenizer, minilm::attention_adapters_of(loaded.model, layers), texts, run);
  matrix want(logits.rows(), logits.cols());
  for (index r = 0; r < want.rows(); ++r)
    for (index c = 0; c < want.cols(); ++c) want(r, c) = check.at("logits").at(r).at(c).get<float>();
  const double scale = want.cwiseAbs().maxCoeff();
  const double error = (logits - want).cwiseAbs().maxCoeff() / scale;
  // For scale: the same model with every b at zero (the VeRA vectors' contribution).
  for (index i = 0; i < layers; ++i)
    for (const char* which : {"query", "value"}) loaded.model.at(minilm::attention_path(i, which)).lambda_b().setZero();
  const matrix without = predict(model, tokenizer, minilm::attention_adapters_of(loaded.model, layers), texts, run);
  std::printf("PEFT adapter %s (r %ld, %zu layers), %zu texts: max |C++ - PEFT| / max |PEFT| = %.3g (tolerance 1e-4); "
              "the VeRA vectors move the logits by up to %.3g of that scale\n",
              adapter_dir.string().c_str(), static_cast<long>(config.r), loaded.model.size(), texts.size(),
              error, (logits - without).cwiseAbs().maxCoeff() / scale);
  return error <= 1e-4 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const settings s = parse(argc, argv);
  try {
    if (!s.check_peft.empty()) return check_peft_adapter(s);
    if (!fs::exists(s.model / "model.safetensors") || !fs::exists(s.fortunes / topics.front())) {
      std::fprintf(stderr,
                   "minilm: needs all-MiniLM-L6-v2 in %s (scripts/fetch-minilm.sh) and Debian's fortunes in %s "
                   "(bash scripts/install-deps.sh fortunes)\n",
                   s.model.string().c_str(), s.fortunes.string().c_str());
      return exit_no_data;
    }
    const auto data = minilm::load_topic_split(s.fortunes, topics, s.train_per_topic, s.test_per_topic);
    const auto tokenizer = minilm::wordpiece_tokenizer::from_file(s.model / "tokenizer.json");
    const auto encoder = minilm::bert_classifier::load_encoder(s.model);
    std::printf("topics:");
    for (const auto& t : topics) std::printf(" %s", t.c_str());
    std::printf("; %zu training and %zu test fortunes; %zu seed(s)\n", data.train.size(), data.test.size(),
                s.seeds.size());
    std::fflush(stdout);  // progress bars go to stderr

    std::vector<method_result> results;
    for (const fs::path& earlier : s.merge)
      for (const auto& r : read_results(earlier)) results.push_back(r);
    for (const std::uint64_t seed : s.seeds) {
      settings run = s;
      run.seed = seed;
      if (s.seeds.size() > 1) run.out = s.out / ("seed" + std::to_string(seed));
      for (const auto& r : run_methods(encoder, tokenizer, data, run)) results.push_back(r);
    }
    // A merged row of a method this run also ran would mix two runs in one bar: this run's wins.
    std::vector<std::string> ran;
    for (const auto& r : results)
      if (!r.merged) ran.push_back(r.short_name);
    results.erase(std::remove_if(results.begin(), results.end(),
                                 [&](const method_result& r) {
                                   return r.merged && std::find(ran.begin(), ran.end(), r.short_name) != ran.end();
                                 }),
                  results.end());
    std::string table = results_table(results, s.seeds.size());
    if (!s.merge.empty()) {
      table += "\nRows marked (merged) are from";
      for (const fs::path& earlier : s.merge) table += " " + earlier.string();
      table += ", not from this run.\n";
    }
    std::printf("%s", table.c_str());
    fs::create_directories(s.out);
    std::ofstream(s.out / "results.md") << table;
    std::vector<minilm::plot::bar> bars;
    for (const auto& r : results) {
      auto it = std::find_if(bars.begin(), bars.end(), [&](const auto& b) { return b.label == r.short_name; });
      if (it == bars.end()) {
        bars.push_back({r.short_name, {}});
        it = std::prev(bars.end());
      }
      it->values.push_back(r.accuracy);
    }
    const std::string title = "TEST ACCURACY, " + std::to_string(s.seeds.size()) + (s.seeds.size() == 1 ? " SEED" : " SEEDS");
    // The axis reaches 0.9, or the next 0.05 above the best seed.
    double best = 0;
    for (const auto& r : results) best = std::max(best, r.accuracy);
    const double high = std::max(0.9, std::ceil(best * 20 + 1e-9) / 20);
    minilm::plot::write_png(minilm::plot::bar_chart(title, bars, 0.6, high, 0.05), s.out / "accuracy.png");
    std::printf("table: %s; plot: %s\n", (s.out / "results.md").string().c_str(),
                (s.out / "accuracy.png").string().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "minilm: %s\n", e.what());
    return 1;
  }
}
