// SPDX-License-Identifier: Apache-2.0
// Tests of sharded models: the index reader, shapes across shards, and merging shard by shard.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>

#include "io_support.hpp"

namespace {

using vera::io::safetensors_file;
using vera_test::scratch_dir;

const auto fixtures = vera_test::peft_fixtures();

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Splits the "linear" fixture model into two shards, tensors alternating, plus an index.
std::filesystem::path make_sharded(const scratch_dir& dir) {
  return vera_test::write_two_shards(safetensors_file(fixtures / "linear_model.safetensors"), dir);
}

vera::io::layer_shapes linear_shapes() {
  const safetensors_file model(fixtures / "linear_model.safetensors");
  std::vector<std::string> paths;
  for (const auto& t : model.tensors()) {
    if (t.name.size() > 7 && t.name.compare(t.name.size() - 7, 7, ".weight") == 0) {
      paths.push_back(t.name.substr(0, t.name.size() - 7));
    }
  }
  return vera::io::layer_shapes_from_weights(model, paths, false);
}

}  // namespace

TEST_CASE("merging a sharded model equals merging the single file, shard by shard", "[io][shards]") {
  scratch_dir dir;
  const auto index = vera::io::read_shard_index(make_sharded(dir));
  CHECK(index.shards.size() == 2);
  const auto shapes = linear_shapes();
  std::vector<std::string> paths;
  for (const auto& [path, shape] : shapes) paths.push_back(path);
  CHECK(vera::io::layer_shapes_from_shards(index, paths, false) == shapes);

  const auto loaded = vera::io::load_peft_adapter<float>(fixtures / "linear_seed", shapes);
  std::vector<std::size_t> calls;
  vera::io::merge_sharded_model(index, loaded.model, dir / "merged", {},
                                [&](std::size_t done, std::size_t total) {
                                  CHECK(total == 2);
                                  calls.push_back(done);
                                });
  CHECK(calls == std::vector<std::size_t>{1, 2});

  const safetensors_file base(fixtures / "linear_model.safetensors");
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, base, loaded.model);
  const auto image = writer.serialize();
  const vera::io::safetensors_view single(image.data(), image.size());
  int adapted_seen = 0;
  for (const auto& t : single.tensors()) {
    INFO(t.name);
    const safetensors_file shard(dir / "merged" / index.shard_of(t.name));
    const auto& out = shard.at(t.name);
    REQUIRE(out.byte_size() == t.byte_size());
    CHECK(std::memcmp(shard.bytes(out), single.bytes(t), t.byte_size()) == 0);
    const std::string path = t.name.substr(0, t.name.size() - 7);
    if (loaded.model.contains(path) && std::memcmp(base.bytes(base.at(t.name)), single.bytes(t), t.byte_size()) != 0) {
      ++adapted_seen;
    }
  }
  CHECK(adapted_seen == static_cast<int>(loaded.model.size()));
  CHECK(std::filesystem::exists(dir / "merged" / "model.safetensors.index.json"));
}

TEST_CASE("hostile or inconsistent shard indexes are refused", "[io][shards][errors]") {
  scratch_dir dir;
  const auto bad = dir / "bad.index.json";
  using Catch::Contains;
  write_text(bad, R"({"weight_map": {"a.weight": "../outside.safetensors"}})");
  CHECK_THROWS_WITH(vera::io::read_shard_index(bad), Contains("not a file name"));
  write_text(bad, R"({"weight_map": {"a.weight": "sub/dir.safetensors"}})");
  CHECK_THROWS_AS(vera::io::read_shard_index(bad), vera::format_error);
  write_text(bad, R"({"metadata": {}})");
  CHECK_THROWS_WITH(vera::io::read_shard_index(bad), Contains("weight_map"));
  write_text(bad, R"({"weight_map": {"a.weight": 3}})");
  CHECK_THROWS_WITH(vera::io::read_shard_index(bad), Contains("not a string"));
  write_text(bad, R"({"weight_map": {}})");
  CHECK_THROWS_WITH(vera::io::read_shard_index(bad), Contains("no shard"));
  write_text(bad, R"({"weight_map": {"a": "x"}, "weight_map": {"a": "y"}})");
  CHECK_THROWS_WITH(vera::io::read_shard_index(bad), Contains("twice"));
  write_text(bad, "{\"weight_map\": ");
  CHECK_THROWS_WITH(vera::io::read_shard_index(bad), Contains("not valid JSON"));

  // An adapted layer the index does not list.
  const auto index = vera::io::read_shard_index(make_sharded(dir));
  const auto shapes = linear_shapes();
  const auto loaded = vera::io::load_peft_adapter<float>(fixtures / "linear_seed", shapes);
  vera::io::shard_index missing = index;
  for (const auto& [path, layer] : loaded.model) missing.weight_map.erase(path + ".weight");
  // All three are named by count, the first and the others listed.
  CHECK_THROWS_WITH(
      vera::io::merge_sharded_model(missing, loaded.model, dir / "out"),
      Contains("no tensor 'model.layers.0.down_proj.weight' in weight_map (and 2 more adapted "
               "layers' weights: 'model.layers.0.q_proj.weight', 'model.layers.0.up_proj.weight')"));
  CHECK_FALSE(std::filesystem::exists(dir / "out"));
  std::vector<std::string> paths;
  for (const auto& [path, layer] : loaded.model) paths.push_back(path);
  CHECK_THROWS_WITH(vera::io::layer_shapes_from_shards(missing, paths, false),
                    Contains("(and 2 more adapted layers' weights"));
}

TEST_CASE("a failed sharded merge leaves no output and never overwrites", "[io][shards][errors]") {
  scratch_dir dir;
  const auto index = vera::io::read_shard_index(make_sharded(dir));
  const auto loaded = vera::io::load_peft_adapter<float>(fixtures / "linear_seed", linear_shapes());

  // Existing, non-empty output: refused before anything is written.
  std::filesystem::create_directories(dir / "taken");
  write_text(dir / "taken" / "keep.txt", "mine");
  CHECK_THROWS_AS(vera::io::merge_sharded_model(index, loaded.model, dir / "taken"), vera::io_error);
  CHECK(std::filesystem::exists(dir / "taken" / "keep.txt"));

  // The second shard is truncated: the first was written to staging, then everything is removed.
  const auto second = dir / index.shards[1];
  std::filesystem::resize_file(second, std::filesystem::file_size(second) - 5);
  const auto before = dir.entries();
  CHECK_THROWS_AS(vera::io::merge_sharded_model(index, loaded.model, dir / "out"), vera::format_error);
  CHECK(dir.entries() == before);
  CHECK_FALSE(std::filesystem::exists(dir / "out"));
}

TEST_CASE("a sharded merge whose final rename fails throws io_error naming the output", "[io][shards][errors]") {
  scratch_dir dir;
  const auto index = vera::io::read_shard_index(make_sharded(dir));
  const auto loaded = vera::io::load_peft_adapter<float>(fixtures / "linear_seed", linear_shapes());
  const auto out = dir / "out";
  auto expected = dir.entries();
  expected.push_back("out");
  std::sort(expected.begin(), expected.end());

  // Someone fills `out` while the shards are written: the final step cannot replace it.
  std::string message;
  try {
    vera::io::merge_sharded_model(index, loaded.model, out, {}, [&](std::size_t, std::size_t) {
      std::filesystem::create_directories(out);
      write_text(out / "keep.txt", "mine");
    });
  } catch (const vera::io_error& e) {
    message = e.what();
  }
  CHECK_THAT(message, Catch::Contains("'" + out.string() + "'"));
  CHECK(std::filesystem::exists(out / "keep.txt"));
  auto after = dir.entries();
  std::sort(after.begin(), after.end());
  CHECK(after == expected);  // the staging directory is gone
}
