// SPDX-License-Identifier: Apache-2.0
// BERT's uncased WordPiece tokenizer, read from a HuggingFace tokenizer.json, id for id.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <vera/core/error.hpp>
#include <vera/io/error.hpp>
#include <vera/io/file.hpp>

#include "unicode_tables.hpp"

namespace minilm {

/// \brief Token ids of a batch of texts, padded to one length; every array is batch x length,
///        row-major (the row of text i starts at i * length).
struct token_batch {
  std::size_t batch = 0;
  std::size_t length = 0;
  std::vector<std::int32_t> ids;
  std::vector<std::int32_t> type_ids;  ///< segment of each token (0: single sentences)
  std::vector<std::int32_t> mask;      ///< 1 for a real token, 0 for padding
};

/// \brief How encode_batch pads: to the longest text of the batch or always to max_length.
enum class padding { longest, max_length };

namespace detail {

/// \brief Appends code point `c` to `out` as UTF-8.
inline void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

/// \brief Decodes UTF-8 into `out` (appending). A malformed sequence (bad lead or continuation
///        byte, overlong form, surrogate, beyond U+10FFFF) becomes U+FFFD, which clean_text then
///        drops, so a stray byte never reaches the vocabulary.
inline void decode_utf8(std::string_view text, std::u32string& out) {
  constexpr char32_t replacement = 0xFFFD;
  std::size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    std::size_t extra = 0;
    char32_t c = 0, min = 0;
    if (lead < 0x80) {
      out += lead;
      ++i;
      continue;
    } else if ((lead & 0xE0) == 0xC0) {
      extra = 1, c = lead & 0x1F, min = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
      extra = 2, c = lead & 0x0F, min = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
      extra = 3, c = lead & 0x07, min = 0x10000;
    } else {
      out += replacement;
      ++i;
      continue;
    }
    std::size_t j = 1;
    for (; j <= extra && i + j < text.size(); ++j) {
      const auto next = static_cast<unsigned char>(text[i + j]);
      if ((next & 0xC0) != 0x80) break;
      c = (c << 6) | (next & 0x3F);
    }
    const bool complete = j == extra + 1;
    const bool valid = complete && c >= min && c <= 0x10FFFF && !(c >= 0xD800 && c <= 0xDFFF);
    out += valid ? c : replacement;
    i += complete ? j : std::max<std::size_t>(j, 1);
  }
}

template <std::size_t N>
bool in_ranges(const unicode_tables::code_range (&table)[N], char32_t c) {
  const auto* end = table + N;
  // The first range whose last code point is not below c is the only one that can hold it.
  const auto* it = std::lower_bound(table, end, c, [](const unicode_tables::code_range& r, char32_t v) {
    return r.last < v;
  });
  return it != end && it->first <= c;
}

/// \brief What strip_accents + lowercase turn one code point into (appended to `out`): NFD with
///        the nonspacing marks dropped, then the lowercase mapping, as tokenizers does per char.
inline void fold(char32_t c, std::u32string& out) {
  if (c < 0x80) {
    out += (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
    return;
  }
  constexpr char32_t hangul_first = 0xAC00, hangul_last = 0xD7A3;
  if (c >= hangul_first && c <= hangul_last) {
    // Hangul syllables decompose arithmetically into leading consonant, vowel, trailing consonant.
    const char32_t s = c - hangul_first;
    out += 0x1100 + s / 588;
    out += 0x1161 + (s % 588) / 28;
    if (s % 28 != 0) out += 0x11A7 + s % 28;
    return;
  }
  if (in_ranges(unicode_tables::nonspacing, c)) return;
  const auto& runs = unicode_tables::fold_runs;
  const auto* run = std::upper_bound(std::begin(runs), std::end(runs), c,
                                     [](char32_t v, const unicode_tables::fold_run& r) {
                                       return v < r.first;
                                     });
  if (run != std::begin(runs)) {
    --run;
    if (c <= run->last && (c - run->first) % run->step == 0) {
      out += static_cast<char32_t>(static_cast<std::int64_t>(c) + run->delta);
      return;
    }
  }
  // fold_pairs alternates code point and target: search the code points only.
  const auto& pairs = unicode_tables::fold_pairs;
  std::size_t lo = 0, hi = std::size(pairs) / 2;
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (pairs[2 * mid] < c) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo < std::size(pairs) / 2 && pairs[2 * lo] == c) {
    out += pairs[2 * lo + 1];
    return;
  }
  const auto& multi = unicode_tables::fold_multi;
  for (std::size_t i = 0; i < std::size(multi); i += 2 + multi[i + 1]) {
    if (multi[i] == c) {
      out.append(multi + i + 2, multi + i + 2 + multi[i + 1]);
      return;
    }
  }
  out += c;
}

}  // namespace detail

/// \brief BERT's text pipeline as HuggingFace tokenizers runs it for an uncased model: special
///        tokens split off the raw text, BertNormalizer, BertPreTokenizer, WordPiece, then
///        [CLS] ... [SEP].
///
/// Only the configuration that uncased BERT checkpoints ship is accepted (clean_text,
/// handle_chinese_chars, lowercase, accents stripped, special tokens matched on the raw text);
/// anything else throws rather than tokenizing differently from tokenizers. Single sentences
/// only (no pairs). One known difference: NFD's canonical reordering is not applied, which
/// matters only for two spacing combining marks of different classes written out of canonical
/// order (tools/make_minilm_unicode.py lists them); tokenizers reorders those, this keeps them.
class wordpiece_tokenizer {
 public:
  /// \brief Reads `path` (a tokenizer.json).
  /// \throws vera::io_error when it cannot be read; vera::format_error naming the file when it is
  ///         not JSON or describes another pipeline.
  static wordpiece_tokenizer from_file(const std::filesystem::path& path) {
    const std::string text = vera::io::read_text_file(path, std::size_t{64} << 20);
    nlohmann::json config = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) throw vera::format_error(path.string() + ": not valid JSON");
    return wordpiece_tokenizer(config, path.string());
  }

  /// \brief From the parsed tokenizer.json; `source` names it in messages.
  wordpiece_tokenizer(const nlohmann::json& config, std::string source) : source_(std::move(source)) {
    try {
      read_model(config.at("model"));
      check_normalizer(config.at("normalizer"));
      check_pre_tokenizer(config.at("pre_tokenizer"));
      read_post_processor(config.at("post_processor"));
      read_added_tokens(config.at("added_tokens"));
      read_pad(config);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("unexpected structure: ") + e.what());
    }
  }

  /// \brief Number of entries in the vocabulary.
  std::size_t vocab_size() const noexcept { return vocab_.size(); }
  /// \brief Id of `token`, or -1.
  std::int32_t token_id(const std::string& token) const {
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
  }
  std::int32_t cls_id() const noexcept { return cls_id_; }
  std::int32_t sep_id() const noexcept { return sep_id_; }
  std::int32_t pad_id() const noexcept { return pad_id_; }
  std::int32_t unk_id() const noexcept { return unk_id_; }

  /// \brief [CLS] + the text's tokens + [SEP], keeping the first max_length - 2 tokens of the
  ///        text (tokenizers' truncation of a single sequence).
  /// \throws vera::value_error when max_length < 2.
  std::vector<std::int32_t> encode(std::string_view text, std::size_t max_length) const {
    if (max_length < 2)
      throw vera::value_error("tokenizer: max_length " + std::to_string(max_length) +
                              " leaves no room for [CLS] and [SEP]");
    std::vector<std::int32_t> ids{cls_id_};
    tokenize_into(text, ids);
    if (ids.size() > max_length - 1) ids.resize(max_length - 1);
    ids.push_back(sep_id_);
    return ids;
  }

  /// \brief encode() of every text, padded with [PAD] to the longest or to max_length.
  token_batch encode_batch(const std::vector<std::string>& texts, std::size_t max_length,
                           padding pad = padding::longest) const {
    std::vector<std::vector<std::int32_t>> rows;
    rows.reserve(texts.size());
    std::size_t length = pad == padding::max_length ? max_length : 0;
    for (const auto& text : texts) {
      rows.push_back(encode(text, max_length));
      length = std::max(length, rows.back().size());
    }
    token_batch out;
    out.batch = texts.size();
    out.length = length;
    out.ids.assign(out.batch * length, pad_id_);
    out.type_ids.assign(out.batch * length, 0);
    out.mask.assign(out.batch * length, 0);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      std::copy(rows[i].begin(), rows[i].end(), out.ids.begin() + static_cast<std::ptrdiff_t>(i * length));
      std::fill_n(out.mask.begin() + static_cast<std::ptrdiff_t>(i * length), rows[i].size(), 1);
    }
    return out;
  }

  /// \brief The text's WordPiece ids, without [CLS]/[SEP] or truncation, appended to `ids`.
  void tokenize_into(std::string_view text, std::vector<std::int32_t>& ids) const {
    // Special tokens are matched on the raw text (they are not normalized), leftmost first and
    // the longest where several start at the same byte; what lies between goes through BERT.
    std::size_t start = 0;
    for (std::size_t i = 0; i < text.size();) {
      const special_token* match = nullptr;
      for (const auto& special : specials_) {
        if (text.compare(i, special.content.size(), special.content) == 0 &&
            (match == nullptr || special.content.size() > match->content.size()))
          match = &special;
      }
      if (match == nullptr) {
        ++i;
        continue;
      }
      tokenize_plain(text.substr(start, i - start), ids);
      ids.push_back(match->id);
      i += match->content.size();
      start = i;
    }
    tokenize_plain(text.substr(start), ids);
  }

  /// \brief BertNormalizer's output for `text` (no special-token matching), as UTF-8.
  std::string normalize(std::string_view text) const {
    std::u32string decoded, normalized;
    detail::decode_utf8(text, decoded);
    normalize_into(decoded, normalized);
    std::string out;
    for (const char32_t c : normalized) detail::append_utf8(c, out);
    return out;
  }

 private:
  struct special_token {
    std::string content;
    std::int32_t id;
  };

  [[noreturn]] void fail(const std::string& what) const {
    throw vera::format_error(source_ + ": " + what);
  }

  std::int32_t require_token(const std::string& token, const char* role) const {
    const std::int32_t id = token_id(token);
    if (id < 0) fail(std::string(role) + " token '" + token + "' is not in the vocabulary");
    return id;
  }

  void read_model(const nlohmann::json& model) {
    if (model.at("type") != "WordPiece") fail("model type is not WordPiece");
    for (const auto& [token, id] : model.at("vocab").items()) vocab_.emplace(token, id.get<std::int32_t>());
    prefix_ = model.value("continuing_subword_prefix", std::string("##"));
    max_word_chars_ = model.value("max_input_chars_per_word", std::size_t{100});
    unk_id_ = require_token(model.at("unk_token").get<std::string>(), "unknown");
  }

  void check_normalizer(const nlohmann::json& normalizer) const {
    if (normalizer.at("type") != "BertNormalizer") fail("normalizer is not a BertNormalizer");
    const bool lowercase = normalizer.at("lowercase").get<bool>();
    const auto& strip = normalizer.at("strip_accents");
    const bool strip_accents = strip.is_null() ? lowercase : strip.get<bool>();
    if (!normalizer.at("clean_text").get<bool>() || !normalizer.at("handle_chinese_chars").get<bool>() ||
        !lowercase || !strip_accents)
      fail("only the uncased BertNormalizer (clean_text, handle_chinese_chars, lowercase, "
           "strip_accents) is supported");
  }

  void check_pre_tokenizer(const nlohmann::json& pre) const {
    if (pre.at("type") != "BertPreTokenizer") fail("pre_tokenizer is not a BertPreTokenizer");
  }

  void read_post_processor(const nlohmann::json& post) {
    const auto& type = post.at("type");
    if (type == "BertProcessing") {
      cls_id_ = post.at("cls").at(1).get<std::int32_t>();
      sep_id_ = post.at("sep").at(1).get<std::int32_t>();
      return;
    }
    if (type != "TemplateProcessing") fail("post_processor is neither BertProcessing nor TemplateProcessing");
    // The single-sentence template must be [CLS] $A [SEP].
    const auto& single = post.at("single");
    if (single.size() != 3 || !single[0].contains("SpecialToken") || !single[1].contains("Sequence") ||
        !single[2].contains("SpecialToken"))
      fail("post_processor's single template is not <special> $A <special>");
    const auto& specials = post.at("special_tokens");
    const auto id_of = [&](const nlohmann::json& piece) {
      const auto& ids = specials.at(piece.at("SpecialToken").at("id").get<std::string>()).at("ids");
      if (ids.size() != 1) fail("a special token of the template has several ids");
      return ids[0].get<std::int32_t>();
    };
    cls_id_ = id_of(single[0]);
    sep_id_ = id_of(single[2]);
  }

  void read_added_tokens(const nlohmann::json& added) {
    for (const auto& token : added) {
      if (token.value("normalized", true) || token.value("single_word", false) ||
          token.value("lstrip", false) || token.value("rstrip", false))
        fail("added token " + token.at("content").dump() +
             " is matched with options this tokenizer does not implement "
             "(only normalized, single_word, lstrip and rstrip all false)");
      special_token special{token.at("content").get<std::string>(), token.at("id").get<std::int32_t>()};
      if (special.content.empty()) fail("an added token is empty");
      specials_.push_back(std::move(special));
    }
  }

  void read_pad(const nlohmann::json& config) {
    const auto padding = config.find("padding");
    if (padding != config.end() && padding->is_object()) {
      pad_id_ = padding->at("pad_id").get<std::int32_t>();
    } else {
      pad_id_ = require_token("[PAD]", "padding");
    }
  }

  static void normalize_into(const std::u32string& text, std::u32string& out) {
    namespace tables = unicode_tables;
    for (const char32_t c : text) {
      if (detail::in_ranges(tables::removed, c)) continue;
      if (detail::in_ranges(tables::to_space, c)) {
        out += U' ';
      } else if (detail::in_ranges(tables::chinese, c)) {
        out += U' ';
        detail::fold(c, out);
        out += U' ';
      } else {
        detail::fold(c, out);
      }
    }
  }

  void tokenize_plain(std::string_view text, std::vector<std::int32_t>& ids) const {
    if (text.empty()) return;
    std::u32string decoded, normalized, word;
    detail::decode_utf8(text, decoded);
    normalize_into(decoded, normalized);
    for (const char32_t c : normalized) {
      if (detail::in_ranges(unicode_tables::whitespace, c)) {
        word_pieces(word, ids);
      } else if (detail::in_ranges(unicode_tables::punctuation, c)) {
        word_pieces(word, ids);
        word = c;
        word_pieces(word, ids);
      } else {
        word += c;
      }
    }
    word_pieces(word, ids);
  }

  /// \brief Greedy longest-match WordPiece of `word` (then cleared): the whole word becomes
  ///        [UNK] when it is too long or when some position matches no piece.
  void word_pieces(std::u32string& word, std::vector<std::int32_t>& ids) const {
    if (word.empty()) return;
    if (word.size() > max_word_chars_) {
      ids.push_back(unk_id_);
      word.clear();
      return;
    }
    // UTF-8 of the word with the byte offset of every character, so pieces are byte ranges.
    std::string utf8;
    std::vector<std::size_t> offset;
    for (const char32_t c : word) {
      offset.push_back(utf8.size());
      detail::append_utf8(c, utf8);
    }
    offset.push_back(utf8.size());
    const std::size_t first_new = ids.size();
    std::string piece;
    for (std::size_t begin = 0; begin < word.size();) {
      std::size_t end = word.size();
      std::int32_t found = -1;
      for (; end > begin; --end) {
        piece.assign(begin == 0 ? "" : prefix_);
        piece.append(utf8, offset[begin], offset[end] - offset[begin]);
        found = token_id(piece);
        if (found >= 0) break;
      }
      if (found < 0) {
        ids.resize(first_new);
        ids.push_back(unk_id_);
        break;
      }
      ids.push_back(found);
      begin = end;
    }
    word.clear();
  }

  std::string source_;
  std::unordered_map<std::string, std::int32_t> vocab_;
  std::vector<special_token> specials_;
  std::string prefix_;
  std::size_t max_word_chars_ = 100;
  std::int32_t unk_id_ = -1, cls_id_ = -1, sep_id_ = -1, pad_id_ = 0;
};

}  // namespace minilm
