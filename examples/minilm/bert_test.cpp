// SPDX-License-Identifier: Apache-2.0
// The BERT forward against transformers: a tiny random BertForSequenceClassification always, the
// real all-MiniLM-L6-v2 with a seeded classifier when fetched; input checks and load errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <unistd.h>
#include <vector>

#include "bert.hpp"
#include "test_support.hpp"

namespace {

using minilm::matrix;

/// \brief max |got - want| / max |want|: the error relative to the reference's scale.
double relative_error(const matrix& got, const matrix& want) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  return static_cast<double>((got - want).cwiseAbs().maxCoeff()) / static_cast<double>(want.cwiseAbs().maxCoeff());
}

std::filesystem::path tiny_dir() { return minilm::test::fixture_dir() / "tiny_model"; }

/// \brief A fresh copy of the tiny model in a temporary directory, to damage.
std::filesystem::path copy_tiny(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("minilm_test_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors"})
    std::filesystem::copy_file(tiny_dir() / file, dir / file);
  return dir;
}

template <class Error>
void check_load_error(const std::filesystem::path& dir, const std::string& fragment) {
  try {
    (void)minilm::bert_classifier::load(dir);
    FAIL("loaded " << dir.string());
  } catch (const Error& e) {
    const std::string message = e.what();
    INFO(message);
    CHECK(message.find(fragment) != std::string::npos);
    CHECK(message.find("scripts/fetch-minilm.sh") != std::string::npos);
  }
}

}  // namespace

TEST_CASE("a tiny BertForSequenceClassification gives transformers' pooler output and logits", "[bert]") {
  const auto reference = minilm::test::read_json(minilm::test::fixture_dir() / "tiny_reference.json");
  const auto model = minilm::bert_classifier::load(tiny_dir());
  CHECK(model.encoder().config().layers == 2);
  CHECK(model.classifier().weight.rows() == 3);
  minilm::bert_workspace ws;
  const matrix logits = model.forward(minilm::test::to_batch(reference), ws);
  const double pooled_error = relative_error(ws.pooled, minilm::test::to_matrix(reference.at("pooled")));
  const double logits_error = relative_error(logits, minilm::test::to_matrix(reference.at("logits")));
  std::cout << "minilm: tiny model vs transformers: pooled " << pooled_error << ", logits " << logits_error
            << " (max abs error / max abs value)\n";
  CHECK(pooled_error < 1e-5);
  CHECK(logits_error < 1e-5);

  // The same workspace again: the same numbers, bit for bit.
  const matrix again = model.forward(minilm::test::to_batch(reference), ws);
  CHECK(again == logits);
}

TEST_CASE("padding does not change a sequence's logits", "[bert]") {
  const auto reference = minilm::test::read_json(minilm::test::fixture_dir() / "tiny_reference.json");
  const auto model = minilm::bert_classifier::load(tiny_dir());
  const minilm::token_batch padded = minilm::test::to_batch(reference);
  minilm::bert_workspace ws;
  const matrix batch_logits = model.forward(padded, ws);
  for (std::size_t row = 0; row < padded.batch; ++row) {
    // The fixture pads on the right: the first `real` cells of the row are the sequence.
    const auto begin = static_cast<std::ptrdiff_t>(row * padded.length);
    const auto mask_row = padded.mask.begin() + begin;
    const auto real = std::count(mask_row, mask_row + static_cast<std::ptrdiff_t>(padded.length), 1);
    minilm::token_batch alone;
    alone.batch = 1;
    alone.length = static_cast<std::size_t>(real);
    alone.ids.assign(padded.ids.begin() + begin, padded.ids.begin() + begin + real);
    alone.type_ids.assign(padded.type_ids.begin() + begin, padded.type_ids.begin() + begin + real);
    alone.mask.assign(alone.length, 1);
    minilm::bert_workspace own;
    const matrix logits = model.forward(alone, own);
    CAPTURE(row);
    CHECK(relative_error(logits, batch_logits.row(static_cast<Eigen::Index>(row))) < 1e-5);
  }
}

TEST_CASE("the forward pass refuses ids, types and lengths the model cannot embed", "[bert]") {
  const auto model = minilm::bert_classifier::load(tiny_dir());
  const auto& config = model.encoder().config();
  minilm::token_batch batch;
  batch.batch = 1;
  batch.length = 3;
  batch.ids = {2, 7, 3};
  batch.type_ids = {0, 1, 0};
  batch.mask = {1, 1, 1};
  minilm::bert_workspace ws;
  REQUIRE_NOTHROW(model.forward(batch, ws));
  auto bad = batch;
  bad.ids[1] = static_cast<std::int32_t>(config.vocab_size);
  CHECK_THROWS_AS(model.forward(bad, ws), vera::value_error);
  bad = batch;
  bad.ids[1] = -1;
  CHECK_THROWS_AS(model.forward(bad, ws), vera::value_error);
  bad = batch;
  bad.type_ids[0] = static_cast<std::int32_t>(config.type_vocab_size);
  CHECK_THROWS_AS(model.forward(bad, ws), vera::value_error);
  bad = batch;
  bad.mask.pop_back();
  CHECK_THROWS_AS(model.forward(bad, ws), vera::value_error);
  bad.length = static_cast<std::size_t>(config.max_positions) + 1;
  bad.ids.assign(bad.length, 5);
  bad.type_ids.assign(bad.length, 0);
  bad.mask.assign(bad.length, 1);
  CHECK_THROWS_AS(model.forward(bad, ws), vera::value_error);
}

TEST_CASE("a missing or damaged model is reported with its file and the fetch script", "[bert]") {
  check_load_error<vera::io_error>(minilm::test::fixture_dir() / "no_such_model", "config.json");

  const auto missing_weights = copy_tiny("missing");
  std::filesystem::remove(missing_weights / "model.safetensors");
  check_load_error<vera::io_error>(missing_weights, "model.safetensors");

  const auto truncated = copy_tiny("truncated");
  std::filesystem::resize_file(truncated / "model.safetensors", 5000);
  check_load_error<vera::format_error>(truncated, "model.safetensors");

  const auto wider = copy_tiny("wider");
  auto config = minilm::test::read_json(wider / "config.json");
  config["intermediate_size"] = 65;
  std::ofstream(wider / "config.json") << config.dump();
  check_load_error<vera::format_error>(wider, "intermediate.dense.weight");

  const auto gelu_tanh = copy_tiny("gelu_tanh");
  config = minilm::test::read_json(gelu_tanh / "config.json");
  config["hidden_act"] = "gelu_new";
  std::ofstream(gelu_tanh / "config.json") << config.dump();
  check_load_error<vera::format_error>(gelu_tanh, "hidden_act");

  for (const auto& dir : {missing_weights, truncated, wider, gelu_tanh}) std::filesystem::remove_all(dir);
}

TEST_CASE("all-MiniLM-L6-v2 with a seeded classifier gives transformers' logits", "[bert][real]") {
  if (!minilm::test::have_real_model("real model")) return;
  const auto reference = minilm::test::read_json(minilm::test::fixture_dir() / "real_reference.json");
  const auto texts = reference.at("texts").get<std::vector<std::string>>();
  const auto max_length = reference.at("max_length").get<std::size_t>();

  // The C++ tokenizer first: its ids and mask must be the ones transformers ran.
  const auto tokenizer = minilm::wordpiece_tokenizer::from_file(minilm::test::data_dir() / "tokenizer.json");
  const minilm::token_batch all = tokenizer.encode_batch(texts, max_length);
  const minilm::token_batch want = minilm::test::to_batch(reference);
  REQUIRE(all.length == want.length);
  CHECK(all.ids == want.ids);
  CHECK(all.mask == want.mask);

  const vera::io::safetensors_file head_file(minilm::test::fixture_dir() / "real_classifier.safetensors");
  minilm::linear_weights head{vera::io::read_matrix<float>(head_file, "classifier.weight"),
                              vera::io::read_vector<float>(head_file, "classifier.bias")};
  const minilm::bert_classifier model(minilm::bert_classifier::load_encoder(minilm::test::data_dir()),
                                      std::move(head));
  CHECK(model.encoder().config().hidden_size == 384);

  // Sixteen texts at a time, each chunk padded only to its own longest text.
  const matrix want_logits = minilm::test::to_matrix(reference.at("logits"));
  matrix logits(want_logits.rows(), want_logits.cols());
  minilm::bert_workspace ws;
  constexpr std::size_t chunk = 16;
  for (std::size_t first = 0; first < texts.size(); first += chunk) {
    const std::size_t last = std::min(first + chunk, texts.size());
    const std::vector<std::string> part(texts.begin() + static_cast<std::ptrdiff_t>(first),
                                        texts.begin() + static_cast<std::ptrdiff_t>(last));
    logits.middleRows(static_cast<Eigen::Index>(first), static_cast<Eigen::Index>(part.size())) =
        model.forward(tokenizer.encode_batch(part, max_length), ws);
  }
  const double error = relative_error(logits, want_logits);
  std::cout << "minilm: all-MiniLM-L6-v2 vs transformers on " << texts.size() << " texts: logits " << error
            << " (max abs error / max abs value)\n";
  CHECK(error < 1e-4);
}
