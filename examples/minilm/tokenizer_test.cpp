// SPDX-License-Identifier: Apache-2.0
// The WordPiece tokenizer against transformers' ids (tiny vocabulary always, the real one when
// fetched), padding and truncation, malformed input and unsupported tokenizer.json files.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "tokenizer.hpp"

namespace {

using ids_t = std::vector<std::int32_t>;

/// \brief How many fixture texts the tokenizer encodes exactly as transformers did; each
///        mismatch is reported with its text.
std::size_t count_agreeing(const minilm::wordpiece_tokenizer& tok, const nlohmann::json& cases,
                           const char* vocabulary) {
  const auto& texts = cases.at("texts");
  const auto& expected = cases.at(vocabulary).at("ids");
  REQUIRE(texts.size() == expected.size());
  std::size_t agree = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const auto text = texts[i].get<std::string>();
    const auto want = expected[i].get<ids_t>();
    const auto got = tok.encode(text, 512);
    INFO("text #" << i << ": " << nlohmann::json(text).dump());
    CHECK(got == want);
    agree += got == want ? 1 : 0;
  }
  return agree;
}

void check_batches(const minilm::wordpiece_tokenizer& tok, const nlohmann::json& batches) {
  for (const auto& c : batches) {
    const auto pad = c.at("padding") == "max_length" ? minilm::padding::max_length : minilm::padding::longest;
    const auto texts = c.at("texts").get<std::vector<std::string>>();
    const auto max_length = c.at("max_length").get<std::size_t>();
    const minilm::token_batch batch = tok.encode_batch(texts, max_length, pad);
    const auto want_ids = c.at("ids").get<std::vector<ids_t>>();
    const auto want_mask = c.at("mask").get<std::vector<ids_t>>();
    INFO("padding " << c.at("padding") << ", max_length " << max_length);
    REQUIRE(batch.batch == want_ids.size());
    REQUIRE(batch.length == want_ids.at(0).size());
    for (std::size_t i = 0; i < batch.batch; ++i) {
      const auto row = [&](const ids_t& all) {
        return ids_t(all.begin() + static_cast<std::ptrdiff_t>(i * batch.length),
                     all.begin() + static_cast<std::ptrdiff_t>((i + 1) * batch.length));
      };
      CHECK(row(batch.ids) == want_ids[i]);
      CHECK(row(batch.mask) == want_mask[i]);
      CHECK(row(batch.type_ids) == ids_t(batch.length, 0));
    }
  }
}

minilm::wordpiece_tokenizer tiny_tokenizer() {
  return minilm::wordpiece_tokenizer::from_file(minilm::test::fixture_dir() / "tiny_tokenizer.json");
}

}  // namespace

TEST_CASE("the tiny vocabulary tokenizes every fixture text as transformers does", "[tokenizer]") {
  const auto cases = minilm::test::read_json(minilm::test::fixture_dir() / "tokenizer_cases.json");
  const auto tok = tiny_tokenizer();
  const std::size_t agree = count_agreeing(tok, cases, "tiny");
  std::cout << "minilm: tiny tokenizer agrees on " << agree << " of " << cases.at("texts").size() << " texts\n";
  check_batches(tok, cases.at("tiny").at("batches"));
}

TEST_CASE("the real vocabulary tokenizes every fixture text as transformers does", "[tokenizer][real]") {
  if (!minilm::test::have_real_model("real tokenizer")) return;
  const auto cases = minilm::test::read_json(minilm::test::fixture_dir() / "tokenizer_cases.json");
  const auto tok = minilm::wordpiece_tokenizer::from_file(minilm::test::data_dir() / "tokenizer.json");
  CHECK(tok.vocab_size() == 30522);
  const std::size_t agree = count_agreeing(tok, cases, "real");
  std::cout << "minilm: real tokenizer agrees on " << agree << " of " << cases.at("texts").size() << " texts\n";
  check_batches(tok, cases.at("real").at("batches"));
}

TEST_CASE("malformed UTF-8 tokenizes like U+FFFD, which clean_text drops", "[tokenizer]") {
  const auto tok = tiny_tokenizer();
  const ids_t replaced = tok.encode("ab \xEF\xBF\xBD cd", 64);
  // A stray continuation byte, a truncated sequence, an overlong '/', an encoded surrogate.
  const std::vector<std::string> malformed = {"\x80", "\xE2\x82", "\xC0\xAF", "\xED\xA0\x80", "\xF8"};
  for (std::size_t i = 0; i < malformed.size(); ++i) {
    CAPTURE(i);
    CHECK(tok.encode("ab " + malformed[i] + " cd", 64) == replaced);
  }
  CHECK(tok.encode("ab\xE2\x82", 64) == tok.encode("ab", 64));
}

TEST_CASE("truncation keeps [CLS] and [SEP] and refuses a length without room for them", "[tokenizer]") {
  const auto tok = tiny_tokenizer();
  const ids_t full = tok.encode("hello world and the cafe", 512);
  REQUIRE(full.size() > 4);
  const ids_t cut = tok.encode("hello world and the cafe", 4);
  CHECK(cut == ids_t{full[0], full[1], full[2], tok.sep_id()});
  CHECK(tok.encode("hello", 2) == ids_t{tok.cls_id(), tok.sep_id()});
  CHECK_THROWS_AS(tok.encode("hello", 1), vera::value_error);
}

TEST_CASE("tokenizer.json files describing another pipeline are refused by name", "[tokenizer]") {
  const auto path = minilm::test::fixture_dir() / "tiny_tokenizer.json";
  const nlohmann::json good = minilm::test::read_json(path);
  const auto refused = [](const nlohmann::json& config, const std::string& fragment) {
    try {
      minilm::wordpiece_tokenizer(config, "edited.json");
      FAIL("accepted: " << fragment);
    } catch (const vera::format_error& e) {
      const std::string message = e.what();
      INFO(message);
      CHECK(message.find("edited.json") != std::string::npos);
      CHECK(message.find(fragment) != std::string::npos);
    }
  };
  nlohmann::json cased = good;
  cased["normalizer"]["lowercase"] = false;
  refused(cased, "uncased BertNormalizer");
  nlohmann::json bpe = good;
  bpe["model"]["type"] = "BPE";
  refused(bpe, "WordPiece");
  nlohmann::json normalized_special = good;
  normalized_special["added_tokens"][0]["normalized"] = true;
  refused(normalized_special, "added token");
  nlohmann::json no_unk = good;
  no_unk["model"]["unk_token"] = "<unk>";
  refused(no_unk, "'<unk>'");
  nlohmann::json broken = good;
  broken.erase("post_processor");
  refused(broken, "unexpected structure");
  CHECK_THROWS_AS(minilm::wordpiece_tokenizer::from_file(minilm::test::fixture_dir() / "absent.json"),
                  vera::io_error);
}
