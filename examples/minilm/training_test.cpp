// SPDX-License-Identifier: Apache-2.0
// The BERT classifier on the tiny random fixture model: the backward pass (VeRA on query and
// value or on every linear layer, LoRA, full fine-tuning) against central finite differences in
// double, and a PEFT adapter's logits.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <vera/io.hpp>

#include "bert.hpp"
#include "test_support.hpp"
#include "training.hpp"

namespace {

using model_t = minilm::basic_bert_classifier<double>;
using minilm::matrix_t;

/// \brief Three sequences of different lengths, right-padded to 7, with both token types.
minilm::token_batch tiny_batch() {
  minilm::token_batch batch;
  batch.batch = 3;
  batch.length = 7;
  batch.ids = {2, 17, 40, 9, 3, 0, 0,  //
               2, 55, 100, 7, 12, 81, 3,  //
               2, 30, 3, 0, 0, 0, 0};
  batch.type_ids = {0, 0, 0, 0, 0, 0, 0,  //
                    0, 0, 0, 1, 1, 1, 1,  //
                    0, 0, 0, 0, 0, 0, 0};
  batch.mask = {1, 1, 1, 1, 1, 0, 0,  //
                1, 1, 1, 1, 1, 1, 1,  //
                1, 1, 1, 0, 0, 0, 0};
  return batch;
}

/// \brief max |got - want| / max |want| over a parameter group.
double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    diff = std::max(diff, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return diff / scale;
}

/// \brief Central differences of `loss` in each of `count` values at `values`.
std::vector<double> numeric_gradient(double* values, std::size_t count, const std::function<double()>& loss) {
  const double step = 1e-5;
  std::vector<double> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    const double saved = values[i];
    values[i] = saved + step;
    const double up = loss();
    values[i] = saved - step;
    const double down = loss();
    values[i] = saved;
    out[i] = (up - down) / (2 * step);
  }
  return out;
}

std::vector<double> as_vector(const Eigen::Ref<const Eigen::VectorXd>& v) { return {v.data(), v.data() + v.size()}; }

/// \brief max |analytic - numeric| / max |numeric| over `entries` of a buffer (`values` and its
///        gradient `analytic`, both contiguous), the numeric one by central differences.
double sampled_error(double* values, const double* analytic, const std::vector<std::size_t>& entries,
                     const std::function<double()>& loss) {
  std::vector<double> got, want;
  for (const std::size_t i : entries) {
    got.push_back(analytic[i]);
    want.push_back(numeric_gradient(values + i, 1, loss)[0]);
  }
  return relative_error(got, want);
}

/// \brief `count` distinct entries of [0, size) (all of them when size <= count).
std::vector<std::size_t> sample(std::size_t size, std::size_t count, std::mt19937& engine) {
  std::vector<std::size_t> all(size);
  for (std::size_t i = 0; i < size; ++i) all[i] = i;
  if (size <= count) return all;
  std::shuffle(all.begin(), all.end(), engine);
  all.resize(count);
  return all;
}

/// \brief A training pass of `model` on the tiny batch with `per_layer`'s adapters: loss() runs the
///        training forward (as often as the finite differences need), backward() the forward and
///        then the backward into `grads`.
struct training_pass {
  training_pass(model_t& m, const std::vector<minilm::attention_adapters<double>>& adapters, std::vector<int> l)
      : model(m), per_layer(adapters), labels(std::move(l)) {}

  model_t& model;
  const std::vector<minilm::attention_adapters<double>>& per_layer;
  std::vector<int> labels;
  minilm::token_batch tokens = tiny_batch();
  minilm::basic_bert_workspace<double> ws;
  matrix_t<double> d_logits;
  minilm::classifier_gradients<double> grads;
  minilm::backward_workspace<double> bws;
  /// Set: full fine-tuning (every encoder weight's gradient goes there).
  minilm::encoder_gradients<double>* weights = nullptr;

  double loss() {
    const minilm::pass mode = weights != nullptr ? minilm::pass::train_weights : minilm::pass::train;
    return minilm::cross_entropy(model.forward(tokens, ws, per_layer, mode), labels, d_logits);
  }
  void backward() {
    (void)loss();
    if (weights != nullptr) {
      minilm::backward_full(model, tokens, ws, d_logits, grads, *weights, bws);
    } else {
      minilm::backward(model, per_layer, ws, d_logits, grads, bws);
    }
  }
};

// PEFT's b = 0 would make every dL/dd zero: draw b and d so that both gradients are checked.
void randomise_lambdas(vera::io::model_adapter<double>& adapters, std::uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<double> uniform(-0.5, 0.5);
  for (auto& [path, ad] : adapters) {
    for (minilm::index i = 0; i < ad.lambda_b().size(); ++i) ad.lambda_b()[i] = uniform(engine);
    for (minilm::index i = 0; i < ad.lambda_d().size(); ++i) ad.lambda_d()[i] = 1.0 + uniform(engine);
  }
}

}  // namespace

TEST_CASE("the VeRA backward through BERT matches finite differences in double", "[training]") {
  model_t model = model_t::load(minilm::test::fixture_dir() / "tiny_model");
  const auto& config = model.encoder().config();
  auto adapters = minilm::query_value_adapters<double>(config, /*rank=*/6, /*seed=*/0);
  randomise_lambdas(adapters, 7);
  const auto per_layer = minilm::attention_adapters_of(adapters, config.layers);
  training_pass pass(model, per_layer, {2, 0, 1});
  const auto loss = [&] { return pass.loss(); };
  pass.backward();
  const auto& grads = pass.grads;
  REQUIRE(grads.layers.size() == 2);

  double worst = 0;
  for (minilm::index layer = 0; layer < config.layers; ++layer) {
    for (const char* which : {"query", "value"}) {
      auto& ad = adapters.at(minilm::attention_path(layer, which));
      const auto& g = grads.layers[static_cast<std::size_t>(layer)];
      const auto& want = std::string(which) == "query" ? g.query : g.value;
      const double b_error = relative_error(as_vector(want.lambda_b),
                                            numeric_gradient(ad.lambda_b().data(), ad.lambda_b().size(), loss));
      const double d_error = relative_error(as_vector(want.lambda_d),
                                            numeric_gradient(ad.lambda_d().data(), ad.lambda_d().size(), loss));
      CAPTURE(layer, which);
      CHECK(b_error < 1e-6);
      CHECK(d_error < 1e-6);
      worst = std::max({worst, b_error, d_error});
    }
  }
  auto& head = model.classifier();
  const Eigen::Map<const Eigen::VectorXd> head_weight_grad(grads.head_weight.data(), grads.head_weight.size());
  const double w_error = relative_error(as_vector(head_weight_grad),
                                        numeric_gradient(head.weight.data(), head.weight.size(), loss));
  const double bias_error =
      relative_error(as_vector(grads.head_bias), numeric_gradient(head.bias.data(), head.bias.size(), loss));
  CHECK(w_error < 1e-6);
  CHECK(bias_error < 1e-6);
  std::cout << "minilm: backward vs finite differences (double, max abs error / max abs value): "
            << "adapters " << worst << ", classifier weight " << w_error << ", bias " << bias_error << "\n";

  // Head only: the same head gradients without going through the encoder (the differences
  // above left `ws` at a perturbed point: run the forward again first).
  pass.backward();
  minilm::classifier_gradients<double> head_only;
  minilm::backward(model, {}, pass.ws, pass.d_logits, head_only, pass.bws);
  CHECK((head_only.head_weight - grads.head_weight).cwiseAbs().maxCoeff() == 0.0);
  CHECK(head_only.layers.empty());
}

TEST_CASE("the LoRA backward through BERT matches finite differences in double", "[training]") {
  model_t model = model_t::load(minilm::test::fixture_dir() / "tiny_model");
  const auto& config = model.encoder().config();
  const minilm::index hidden = config.hidden_size, rank = 3;
  // Random A and B (PEFT's B = 0 would make every dL/dA zero), lora_alpha 6: scale 2.
  std::mt19937 engine(11);
  std::uniform_real_distribution<double> uniform(-0.5, 0.5);
  const auto random = [&](minilm::index rows, minilm::index cols) {
    matrix_t<double> m(rows, cols);
    for (minilm::index i = 0; i < m.size(); ++i) m.data()[i] = uniform(engine);
    return m;
  };
  std::vector<minilm::lora_adapter<double>> loras;
  for (minilm::index i = 0; i < 2 * config.layers; ++i) loras.push_back({random(rank, hidden), random(hidden, rank), 2.0});
  std::vector<minilm::attention_adapters<double>> per_layer(static_cast<std::size_t>(config.layers));
  for (std::size_t i = 0; i < per_layer.size(); ++i) {
    per_layer[i].lora_query = &loras[2 * i];
    per_layer[i].lora_value = &loras[2 * i + 1];
  }
  training_pass pass(model, per_layer, {1, 2, 0});
  const auto loss = [&] { return pass.loss(); };
  pass.backward();
  const auto& grads = pass.grads;

  double worst = 0;
  for (std::size_t i = 0; i < loras.size(); ++i) {
    auto& lora = loras[i];
    const auto& g = grads.layers[i / 2];
    const auto& want = i % 2 == 0 ? g.lora_query : g.lora_value;
    const Eigen::Map<const Eigen::VectorXd> grad_a(want.a.data(), want.a.size()), grad_b(want.b.data(), want.b.size());
    const double a_error = relative_error(as_vector(grad_a), numeric_gradient(lora.a.data(), lora.a.size(), loss));
    const double b_error = relative_error(as_vector(grad_b), numeric_gradient(lora.b.data(), lora.b.size(), loss));
    CAPTURE(i);
    CHECK(a_error < 1e-6);
    CHECK(b_error < 1e-6);
    worst = std::max({worst, a_error, b_error});
  }
  std::cout << "minilm: LoRA backward vs finite differences (double, max abs error / max abs value): " << worst
            << "\n";
}

TEST_CASE("VeRA on every linear layer backward through BERT matches finite differences in double",
          "[training]") {
  model_t model = model_t::load(minilm::test::fixture_dir() / "tiny_model");
  const auto& config = model.encoder().config();
  REQUIRE(config.intermediate_size != config.hidden_size);  // layers of two shapes on one projection
  auto adapters = minilm::all_linear_adapters<double>(config, /*rank=*/6, /*seed=*/0);
  CHECK(adapters.size() == 6 * static_cast<std::size_t>(config.layers));
  // PEFT's rule: one projection sized to the largest in and out, sliced by each layer.
  CHECK(adapters.shared_projection().max_in() == config.intermediate_size);
  CHECK(adapters.shared_projection().max_out() == config.intermediate_size);
  randomise_lambdas(adapters, 13);
  const auto per_layer = minilm::attention_adapters_of(adapters, config.layers);
  REQUIRE(per_layer[0].key != nullptr);
  REQUIRE(per_layer[1].output != nullptr);
  training_pass pass(model, per_layer, {0, 2, 1});
  const auto loss = [&] { return pass.loss(); };
  pass.backward();

  double worst = 0;
  for (minilm::index layer = 0; layer < config.layers; ++layer) {
    const auto& g = pass.grads.layers[static_cast<std::size_t>(layer)];
    const std::vector<std::pair<const char*, const vera::gradients<double>*>> modules = {
        {"attention.self.query", &g.query},     {"attention.self.key", &g.key},
        {"attention.self.value", &g.value},     {"attention.output.dense", &g.attention_output},
        {"intermediate.dense", &g.intermediate}, {"output.dense", &g.output}};
    for (const auto& [module, want] : modules) {
      auto& ad = adapters.at(minilm::layer_module_path(layer, module));
      REQUIRE(want->lambda_b.size() == ad.lambda_b().size());
      const double b_error = relative_error(as_vector(want->lambda_b),
                                            numeric_gradient(ad.lambda_b().data(), ad.lambda_b().size(), loss));
      const double d_error = relative_error(as_vector(want->lambda_d),
                                            numeric_gradient(ad.lambda_d().data(), ad.lambda_d().size(), loss));
      CAPTURE(layer, module);
      CHECK(b_error < 1e-6);
      CHECK(d_error < 1e-6);
      worst = std::max({worst, b_error, d_error});
    }
  }
  std::cout << "minilm: VeRA on all linear layers backward vs finite differences (double, max abs error / "
               "max abs value): "
            << worst << "\n";
}

TEST_CASE("the full fine-tuning backward through BERT matches finite differences in double", "[training]") {
  model_t model = model_t::load(minilm::test::fixture_dir() / "tiny_model");
  const std::vector<minilm::attention_adapters<double>> no_adapters;
  minilm::encoder_gradients<double> weights(model.encoder());
  training_pass pass(model, no_adapters, {0, 2, 1});
  pass.weights = &weights;
  const auto loss = [&] { return pass.loss(); };
  pass.backward();

  std::mt19937 engine(5);
  double worst = 0;
  const auto check = [&](const std::string& name, auto& value, const auto& gradient,
                         const std::vector<std::size_t>& entries) {
    REQUIRE(value.size() == gradient.size());
    const double error = sampled_error(value.data(), gradient.data(), entries, loss);
    CAPTURE(name);
    CHECK(error < 1e-6);
    worst = std::max(worst, error);
  };
  const auto some = [&](const auto& value) { return sample(static_cast<std::size_t>(value.size()), 8, engine); };
  double key_bias = 0;
  const auto linear = [&](const std::string& name, minilm::basic_linear_weights<double>& w,
                          const minilm::basic_linear_weights<double>& g) {
    check(name + ".weight", w.weight, g.weight, some(w.weight));
    if (name.size() < 3 || name.compare(name.size() - 3, 3, "key") != 0) {
      check(name + ".bias", w.bias, g.bias, some(w.bias));
      return;
    }
    // The key's bias adds q·bias to every score of a query's row, which softmax cancels: its
    // gradient is zero, so both sides are compared with zero (the differences' noise is ~1e-11).
    const std::vector<double> numeric = numeric_gradient(w.bias.data(), static_cast<std::size_t>(w.bias.size()), loss);
    for (std::size_t i = 0; i < numeric.size(); ++i)
      key_bias = std::max({key_bias, std::abs(numeric[i]), std::abs(g.bias[static_cast<minilm::index>(i)])});
    CAPTURE(name);
    CHECK(key_bias < 1e-9);
  };
  const auto norm = [&](const std::string& name, minilm::basic_norm_weights<double>& w,
                        const minilm::basic_norm_weights<double>& g) {
    check(name + ".gamma", w.gamma, g.gamma, some(w.gamma));
    check(name + ".beta", w.beta, g.beta, some(w.beta));
  };

  auto& encoder = model.encoder();
  auto& e = encoder.embeddings();
  const minilm::index hidden = encoder.config().hidden_size;
  // Word rows: the batch's tokens (17 and 55 once, 2 and 3 in every sequence) and one it does not
  // use (5: a zero gradient, which the differences must confirm); positions the batch reaches.
  std::vector<std::size_t> word_entries;
  for (const minilm::index row : {2, 3, 17, 55, 5})
    for (const std::size_t col : sample(static_cast<std::size_t>(hidden), 3, engine))
      word_entries.push_back(static_cast<std::size_t>(row * hidden) + col);
  check("word_embeddings", e.word, weights.embeddings.word, word_entries);
  check("position_embeddings", e.position, weights.embeddings.position,
        sample(static_cast<std::size_t>(7 * hidden), 12, engine));
  check("token_type_embeddings", e.token_type, weights.embeddings.token_type, some(e.token_type));
  norm("embeddings.LayerNorm", e.norm, weights.embeddings.norm);
  for (std::size_t i = 0; i < encoder.layers().size(); ++i) {
    auto& w = encoder.layers()[i];
    const auto& g = weights.layers[i];
    const std::string l = "layer " + std::to_string(i) + " ";
    linear(l + "query", w.query, g.query);
    linear(l + "key", w.key, g.key);
    linear(l + "value", w.value, g.value);
    linear(l + "attention.output.dense", w.attention_output, g.attention_output);
    norm(l + "attention.output.LayerNorm", w.attention_norm, g.attention_norm);
    linear(l + "intermediate.dense", w.intermediate, g.intermediate);
    linear(l + "output.dense", w.output, g.output);
    norm(l + "output.LayerNorm", w.output_norm, g.output_norm);
  }
  linear("pooler", encoder.pooler(), weights.pooler);
  linear("classifier", model.classifier(),
         minilm::basic_linear_weights<double>{pass.grads.head_weight, pass.grads.head_bias});
  std::cout << "minilm: full fine-tuning backward vs finite differences (double, max abs error / max abs value, "
               "sampled entries of every weight): "
            << worst << "; key biases (zero gradient) " << key_bias << "\n";

  // Only the rows of the batch's real tokens are written, and the next batch clears them.
  pass.backward();
  std::vector<minilm::index> rows = weights.word_rows;
  std::sort(rows.begin(), rows.end());
  CHECK(rows == std::vector<minilm::index>{2, 3, 7, 9, 12, 17, 30, 40, 55, 81, 100});
  pass.tokens.batch = 1;
  pass.tokens.ids.resize(7);
  pass.tokens.type_ids.resize(7);
  pass.tokens.mask.resize(7);
  pass.labels = {0};
  pass.backward();
  CHECK(weights.word_rows.size() == 5);
  CHECK(weights.embeddings.word.row(55).isZero(0.0));
  CHECK(!weights.embeddings.word.row(17).isZero(0.0));
  CHECK(weights.embeddings.word.row(0).isZero(0.0));  // padding
}

TEST_CASE("fresh VeRA adapters (b = 0) leave the logits unchanged", "[training]") {
  const auto model = minilm::bert_classifier::load(minilm::test::fixture_dir() / "tiny_model");
  const auto adapters = minilm::query_value_adapters<float>(model.encoder().config(), 4, 0);
  CHECK(adapters.size() == 4);
  CHECK(adapters.at(minilm::attention_path(1, "value")).lambda_d().isConstant(0.1f));
  minilm::bert_workspace ws;
  const minilm::matrix plain = model.forward(tiny_batch(), ws);
  const minilm::matrix adapted =
      model.forward(tiny_batch(), ws, minilm::attention_adapters_of(adapters, 2), minilm::pass::train);
  // vera's GEMM may order the sums differently from Eigen's: equal to float rounding.
  CHECK((adapted - plain).cwiseAbs().maxCoeff() <= 1e-6f * plain.cwiseAbs().maxCoeff());
}

TEST_CASE("cross-entropy refuses labels that do not fit the logits", "[training]") {
  const minilm::matrix logits = minilm::matrix::Zero(2, 3);
  minilm::matrix d;
  CHECK(std::abs(minilm::cross_entropy(logits, {0, 2}, d) - std::log(3.0f)) < 1e-6f);
  CHECK_THROWS_AS(minilm::cross_entropy(logits, {0}, d), vera::value_error);
  CHECK_THROWS_AS(minilm::cross_entropy(logits, {0, 3}, d), vera::value_error);
}

TEST_CASE("an adapter saved by PEFT runs on the C++ model to PEFT's logits", "[training]") {
  // tools/make_minilm_peft_fixture.py: VeRA r = 8 on query and value with PEFT's random init
  // (b = 1, d ~ N(0, 1)), A and B saved, a random classifier under modules_to_save.
  const auto dir = minilm::test::fixture_dir();
  const auto reference = minilm::test::read_json(dir / "tiny_vera_reference.json");
  const vera::io::safetensors_file base(dir / "tiny_model" / "model.safetensors");
  const vera::io::safetensors_file weights(dir / "tiny_vera_adapter" / vera::io::adapter_weights_file);
  const auto config = vera::io::vera_config::read(dir / "tiny_vera_adapter");
  const auto shapes = vera::io::layer_shapes_from_weights(base, vera::io::peft_layer_paths(weights), false);
  const auto loaded = vera::io::load_peft_adapter<float>(config, weights, shapes);
  CHECK(loaded.model.size() == 4);
  CHECK(loaded.report.projection_in_file);

  // The head comes from the adapter (modules_to_save), not from the base model.
  const auto* weight = loaded.find_trained("classifier.weight");
  const auto* bias = loaded.find_trained("classifier.bias");
  REQUIRE(weight != nullptr);
  REQUIRE(bias != nullptr);
  const std::vector<float> w = weight->values<float>(), b = bias->values<float>();
  const auto labels = static_cast<minilm::index>(b.size());
  minilm::linear_weights head{
      Eigen::Map<const vera::row_matrix<float>>(w.data(), labels, static_cast<minilm::index>(w.size()) / labels),
      Eigen::Map<const minilm::vec>(b.data(), labels)};
  const minilm::bert_classifier model(minilm::bert_classifier::load_encoder(dir / "tiny_model"), std::move(head));
  minilm::bert_workspace ws;
  const minilm::matrix logits =
      model.forward(minilm::test::to_batch(reference), ws,
                    minilm::attention_adapters_of(loaded.model, model.encoder().config().layers),
                    minilm::pass::evaluate);
  const minilm::matrix want = minilm::test::to_matrix(reference.at("logits"));
  const double error = (logits - want).cwiseAbs().maxCoeff() / want.cwiseAbs().maxCoeff();
  std::cout << "minilm: tiny model with a PEFT VeRA adapter vs PEFT: logits " << error
            << " (max abs error / max abs value)\n";
  CHECK(error < 1e-5);
}
