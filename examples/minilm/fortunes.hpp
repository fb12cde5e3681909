// SPDX-License-Identifier: Apache-2.0
// A topic-classification task from Debian's `fortunes` files: one label per file, a fixed
// hash-based train/test split, balanced by capping each topic.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <vera/io/error.hpp>

namespace minilm {

/// \brief One fortune and the index of the topic (file) it came from.
struct labelled_text {
  std::string text;
  int label = 0;
};

/// \brief The train and test examples of a topic task.
struct topic_split {
  std::vector<std::string> topics;
  std::vector<labelled_text> train, test;
};

/// \brief 64-bit FNV-1a: a fixed, platform-independent hash that decides the split.
inline std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

/// \brief A fortune as printed: overstrike pairs ("_\bx", bold or underlined) reduced to the
///        character shown, surrounding whitespace trimmed.
inline std::string clean_fortune(const std::string& raw) {
  std::string out;
  for (const char c : raw) {
    if (c == '\b') {
      if (!out.empty()) out.pop_back();
    } else {
      out.push_back(c);
    }
  }
  const auto first = out.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  return out.substr(first, out.find_last_not_of(" \t\r\n") - first + 1);
}

/// \brief The fortunes of one file (entries separated by lines holding only "%"), cleaned, empty
///        ones dropped.
/// \throws vera::io_error when the file cannot be read.
inline std::vector<std::string> read_fortunes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw vera::io_error("cannot read " + path.string() + " (Debian: apt-get install fortunes)");
  std::vector<std::string> out;
  std::string line, entry;
  const auto flush = [&] {
    std::string text = clean_fortune(entry);
    if (!text.empty()) out.push_back(std::move(text));
    entry.clear();
  };
  while (std::getline(in, line)) {
    if (line == "%") {
      flush();
    } else {
      entry += line;
      entry += '\n';
    }
  }
  flush();
  return out;
}

/// \brief Topic task over `topics` (file names in `dir`): a fortune is a test example when its
///        FNV-1a hash is 0 mod 5 (about 20%), otherwise a training one; each topic keeps at most
///        `train_per_topic` / `test_per_topic` of them, the smallest hashes first, so the task is
///        balanced and the same on every machine. Duplicate texts are kept once.
inline topic_split load_topic_split(const std::filesystem::path& dir, const std::vector<std::string>& topics,
                                    std::size_t train_per_topic, std::size_t test_per_topic) {
  topic_split split;
  split.topics = topics;
  for (std::size_t label = 0; label < topics.size(); ++label) {
    std::vector<std::pair<std::uint64_t, std::string>> train, test;
    for (auto& text : read_fortunes(dir / topics[label])) {
      const std::uint64_t h = fnv1a(text);
      (h % 5 == 0 ? test : train).emplace_back(h, std::move(text));
    }
    for (auto* part : {&train, &test}) {
      std::sort(part->begin(), part->end());
      part->erase(std::unique(part->begin(), part->end()), part->end());
    }
    const auto take = [&](const auto& from, std::size_t cap, std::vector<labelled_text>& to) {
      for (std::size_t i = 0; i < std::min(cap, from.size()); ++i)
        to.push_back({from[i].second, static_cast<int>(label)});
    };
    take(train, train_per_topic, split.train);
    take(test, test_per_topic, split.test);
  }
  return split;
}

}  // namespace minilm
