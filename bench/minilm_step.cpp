// SPDX-License-Identifier: Apache-2.0
// vera's side of bench/minilm_vs_peft.py: one training step (forward, cross-entropy, backward,
// AdamW) and one inference batch of all-MiniLM-L6-v2 as a BertForSequenceClassification with VeRA
// on every query and value, timed, with the process's peak resident memory, the heap allocations
// of a steady-state step and (one thread) the time per phase. Prints JSON lines.
//
// Usage: minilm_step --task train|infer [--threads T] [--steps N] [--warmup W] [--batch B]
//                    [--length L] [--rank R] [--model DIR] [--fortunes DIR] [--profile]
//        minilm_step --reference DIR    writes the adapter (PEFT format), the batch and this
//                                       side's logits, loss and gradients for the Python side
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <malloc.h>
#include <sys/resource.h>

#include <Eigen/Core>
#include <nlohmann/json.hpp>
#include <vera/io.hpp>
#include <vera/optim.hpp>
#include <vera/vera.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../examples/minilm/bert.hpp"
#include "../examples/minilm/fortunes.hpp"
#include "../examples/minilm/peft_export.hpp"
#include "../examples/minilm/profile.hpp"
#include "../examples/minilm/tokenizer.hpp"
#include "../examples/minilm/training.hpp"

// Every heap allocation of the process goes through these (glibc lets a program replace its
// allocator; the real one stays reachable as __libc_*), so a steady-state step can be checked to
// allocate nothing: operator new, Eigen, OpenMP and the library included.
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
void count() noexcept {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
}
long allocations_so_far() { return allocations.load(std::memory_order_relaxed); }
}  // namespace

extern "C" {
void* malloc(std::size_t size) {
  count();
  return __libc_malloc(size);
}
void* calloc(std::size_t n, std::size_t size) {
  count();
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t size) {
  count();
  return __libc_realloc(p, size);
}
void* memalign(std::size_t alignment, std::size_t size) {
  count();
  return __libc_memalign(alignment, size);
}
void* aligned_alloc(std::size_t alignment, std::size_t size) {
  count();
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t size) {
  count();
  void* p = __libc_memalign(alignment, size);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void free(void* p) { __libc_free(p); }
}

namespace {

namespace fs = std::filesystem;
using minilm::index;
using minilm::matrix;
using minilm::vec;
using clock_type = std::chrono::steady_clock;

const std::vector<std::string> topics = {"computers", "science", "politics", "law", "food"};

struct options {
  std::string task = "train";
  int threads = 1;
  int steps = 10;
  int warmup = 2;
  std::size_t batch = 32;
  std::size_t length = 128;
  index rank = 256;
  fs::path model = "data/minilm";
  fs::path fortunes = "/usr/share/games/fortunes";
  fs::path reference;
  bool profile = false;
};

[[noreturn]] void usage_error(const std::string& what) {
  std::fprintf(stderr,
               "minilm_step: %s\nusage: minilm_step --task train|infer [--threads T] [--steps N] [--warmup W] "
               "[--batch B] [--length L] [--rank R] [--model DIR] [--fortunes DIR] [--profile]\n"
               "       minilm_step --reference DIR [--model DIR] [--fortunes DIR]\n",
               what.c_str());
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (key == "--profile") {
      o.profile = true;
      continue;
    }
    if (i + 1 >= argc) usage_error(key + " needs a value");
    const std::string value = argv[++i];
    if (key == "--task") {
      o.task = value;
    } else if (key == "--threads") {
      o.threads = std::stoi(value);
    } else if (key == "--steps") {
      o.steps = std::stoi(value);
    } else if (key == "--warmup") {
      o.warmup = std::stoi(value);
    } else if (key == "--batch") {
      o.batch = std::stoul(value);
    } else if (key == "--length") {
      o.length = std::stoul(value);
    } else if (key == "--rank") {
      o.rank = std::stol(value);
    } else if (key == "--model") {
      o.model = value;
    } else if (key == "--fortunes") {
      o.fortunes = value;
    } else if (key == "--reference") {
      o.reference = value;
    } else {
      usage_error("unknown option " + key);
    }
  }
  if (o.task != "train" && o.task != "infer") usage_error("--task is train or infer");
  if (o.threads < 1 || o.steps < 1 || o.warmup < 0 || o.batch < 1 || o.length < 3) usage_error("bad count");
  return o;
}

/// \brief `batch` training fortunes spread over the five topics, tokenized and padded (or
///        truncated) to exactly `length` tokens, with their topic labels.
struct fixed_batch {
  minilm::token_batch tokens;
  std::vector<int> labels;
};

fixed_batch make_batch(const options& o, const minilm::wordpiece_tokenizer& tokenizer) {
  const auto data = minilm::load_topic_split(o.fortunes, topics, 120, 40);
  fixed_batch b;
  std::vector<std::string> texts;
  for (std::size_t i = 0; i < o.batch; ++i) {
    const auto& example = data.train[i * data.train.size() / o.batch];
    texts.push_back(example.text);
    b.labels.push_back(example.label);
  }
  b.tokens = tokenizer.encode_batch(texts, o.length, minilm::padding::max_length);
  return b;
}

/// \brief The classifier head transformers would create, N(0, 0.02), seeded.
minilm::linear_weights fresh_head(index labels, index hidden) {
  std::mt19937 engine(1234);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  minilm::linear_weights head{matrix(labels, hidden), vec::Zero(labels)};
  for (index i = 0; i < head.weight.size(); ++i) head.weight.data()[i] = normal(engine);
  return head;
}

/// \brief Everything one configuration runs: the model, VeRA on query and value (PEFT's
///        projection from key 0, d = 0.1, b ~ N(0, 0.1) so that the adapters change the logits),
///        the optimizers and every workspace.
struct setup {
  minilm::bert_classifier model;
  vera::io::model_adapter<float> adapters;
  std::vector<minilm::attention_adapters<float>> per_layer;
  minilm::classifier_gradients<float> grads;
  vera::optim::adamw<float> body{{1e-2, 0.9, 0.999, 1e-8, 0.0}};
  vera::optim::adamw<float> head{{5e-3, 0.9, 0.999, 1e-8, 0.01}};
  minilm::bert_workspace ws;
  minilm::backward_workspace<float> bws;
  matrix d_logits;

  setup(minilm::bert_encoder encoder, index rank)
      : model(with_head(std::move(encoder))),
        adapters(minilm::query_value_adapters<float>(model.encoder().config(), rank, 0)) {
    const index layers = model.encoder().config().layers;
    per_layer = minilm::attention_adapters_of(adapters, layers);
    std::mt19937 engine(99);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    grads.layers.resize(static_cast<std::size_t>(layers));
    for (index i = 0; i < layers; ++i) {
      auto& g = grads.layers[static_cast<std::size_t>(i)];
      for (const char* which : {"query", "value"}) {
        const std::string path = minilm::attention_path(i, which);
        auto& ad = adapters.at(path);
        for (index j = 0; j < ad.lambda_b().size(); ++j) ad.lambda_b()(j) = normal(engine);
        auto& slot = std::string(which) == "query" ? g.query : g.value;
        slot = vera::gradients<float>(ad);
        body.add(path, ad, slot);
      }
    }
    grads.head_weight = matrix::Zero(model.classifier().weight.rows(), model.classifier().weight.cols());
    grads.head_bias = vec::Zero(model.classifier().bias.size());
    head.add("classifier.weight", model.classifier().weight, grads.head_weight);
    head.add("classifier.bias", model.classifier().bias, grads.head_bias, /*decay=*/false);
  }

  static minilm::bert_classifier with_head(minilm::bert_encoder encoder) {
    const index hidden = encoder.config().hidden_size;
    return {std::move(encoder), fresh_head(static_cast<index>(topics.size()), hidden)};
  }

  float train_step(const fixed_batch& b) {
    const matrix& logits = model.forward(b.tokens, ws, per_layer, minilm::pass::train);
    float loss = 0;
    {
      const minilm::profile::scope timer(minilm::profile::phase::loss);
      loss = minilm::cross_entropy(logits, b.labels, d_logits);
    }
    minilm::backward(model, per_layer, ws, d_logits, grads, bws);
    const minilm::profile::scope timer(minilm::profile::phase::optimizer);
    body.step();
    head.step();
    return loss;
  }

  const matrix& infer(const fixed_batch& b) { return model.forward(b.tokens, ws, per_layer, minilm::pass::evaluate); }
};

long peak_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;  // KiB on Linux
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

nlohmann::json matrix_json(const matrix& m) {
  nlohmann::json rows = nlohmann::json::array();
  for (index r = 0; r < m.rows(); ++r) {
    std::vector<float> row(static_cast<std::size_t>(m.cols()));
    for (index c = 0; c < m.cols(); ++c) row[static_cast<std::size_t>(c)] = m(r, c);
    rows.push_back(row);
  }
  return rows;
}

template <class V>
std::vector<float> vector_of(const V& v) {
  return std::vector<float>(v.data(), v.data() + v.size());
}

/// \brief The adapter, the batch and this side's numbers, for bench/minilm_vs_peft.py to check
///        PEFT against before timing it.
int write_reference(const options& o, setup& s, const fixed_batch& b) {
  fs::create_directories(o.reference);
  minilm::save_classifier_adapter(s.adapters, s.model.classifier(), o.reference / "adapter");
  nlohmann::json j;
  j["batch"] = b.tokens.batch;
  j["length"] = b.tokens.length;
  j["input_ids"] = b.tokens.ids;
  j["token_type_ids"] = b.tokens.type_ids;
  j["attention_mask"] = b.tokens.mask;
  j["labels"] = b.labels;
  j["logits"] = matrix_json(s.infer(b));
  j["loss"] = s.train_step(b);
  // Gradients of the first step (computed before the update) of the first and last layers.
  const auto& first = s.grads.layers.front();
  const auto& last = s.grads.layers.back();
  j["grad"]["bert.encoder.layer.0.attention.self.query.vera_lambda_b"] = vector_of(first.query.lambda_b);
  j["grad"]["bert.encoder.layer.0.attention.self.query.vera_lambda_d"] = vector_of(first.query.lambda_d);
  const std::string last_value = "bert.encoder.layer." + std::to_string(s.grads.layers.size() - 1) +
                                 ".attention.self.value.";
  j["grad"][last_value + "vera_lambda_b"] = vector_of(last.value.lambda_b);
  j["grad"][last_value + "vera_lambda_d"] = vector_of(last.value.lambda_d);
  const vera::row_matrix<float> head_grad = s.grads.head_weight;
  j["grad"]["classifier.weight"] = vector_of(head_grad);
  // The loss of the same batch after that AdamW step: the optimizer's update checked too.
  j["loss_after_step"] = s.train_step(b);
  std::ofstream(o.reference / "reference.json") << j.dump();
  std::printf("minilm_step: reference written to %s\n", o.reference.string().c_str());
  return 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  try {
    if (!fs::exists(o.model / "model.safetensors") || !fs::exists(o.fortunes / topics.front())) {
      std::fprintf(stderr, "minilm_step: needs all-MiniLM-L6-v2 in %s (scripts/fetch-minilm.sh) and Debian's "
                   "fortunes in %s\n", o.model.string().c_str(), o.fortunes.string().c_str());
      return 77;
    }
#ifdef _OPENMP
    omp_set_num_threads(o.threads);
#endif
    Eigen::setNbThreads(o.threads);
    const auto tokenizer = minilm::wordpiece_tokenizer::from_file(o.model / "tokenizer.json");
    const fixed_batch batch = make_batch(o, tokenizer);
    setup s(minilm::bert_classifier::load_encoder(o.model), o.rank);
    if (!o.reference.empty()) return write_reference(o, s, batch);

    const bool train = o.task == "train";
    const auto run = [&] {
      if (train) {
        s.train_step(batch);
      } else {
        s.infer(batch);
      }
    };
    for (int i = 0; i < o.warmup; ++i) run();
    std::vector<double> ms;
    long allocated = 0;
    for (int i = 0; i < o.steps; ++i) {
      allocations.store(0);
      counting.store(true);
      const auto start = clock_type::now();
      run();
      const auto stop = clock_type::now();
      counting.store(false);
      allocated = std::max(allocated, allocations.load());
      ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    }
    nlohmann::json line;
    line["side"] = "vera";
    line["task"] = o.task;
    line["threads"] = o.threads;
    line["batch"] = o.batch;
    line["length"] = o.length;
    line["rank"] = o.rank;
    line["ms"] = ms;
    line["median_ms"] = median(ms);
    line["peak_rss_kib"] = peak_rss_kib();
    line["allocations_per_step"] = allocated;  // the most of any timed step
    line["gemm"] = std::string(vera::gemm_provider()) + " (Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
                   std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION) +
                   ", SIMD " + Eigen::SimdInstructionSetsInUse() + ")";
    line["cpu"] = cpu_model();
    std::printf("%s\n", line.dump().c_str());

    if (o.profile) {
      // Timed steps apart from the ones above: the timers add a little of their own.
      minilm::profile::phase_times times;
      minilm::profile::active = &times;
      minilm::profile::allocation_count = allocations_so_far;
      allocations.store(0);
      counting.store(true);
      for (int i = 0; i < o.steps; ++i) run();
      counting.store(false);
      minilm::profile::active = nullptr;
      nlohmann::json p;
      p["side"] = "vera";
      p["task"] = o.task;
      p["threads"] = o.threads;
      p["profile_steps"] = o.steps;
      for (std::size_t i = 0; i < times.seconds.size(); ++i) {
        if (times.calls[i] == 0) continue;
        p["phases"].push_back({{"phase", minilm::profile::phase_names[i]},
                               {"ms_per_step", 1e3 * times.seconds[i] / o.steps},
                               {"allocations_per_step", static_cast<double>(times.allocations[i]) / o.steps}});
      }
      std::printf("%s\n", p.dump().c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "minilm_step: %s\n", e.what());
    return 1;
  }
}
