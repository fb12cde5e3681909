// SPDX-License-Identifier: Apache-2.0
// Sequence-classification VeRA adapters as PEFT saves them (modules_to_save, trained biases, keys
// without PEFT's prefix): load, merge, re-save and LoRA export against PEFT's merge_and_unload.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <vera/io.hpp>
#include <vera/vera.hpp>

#include "io_support.hpp"

using vera::format_error;
using vera::io::safetensors_file;
using vera::io::trained_kind;
using vera_test::message_contains;

namespace {

const auto fixtures = vera_test::peft_fixtures();
const std::vector<std::string> all_cases{"seq_cls_bias_none", "seq_cls_bias_vera_only",
                                         "seq_cls_bias_all"};
const std::string query = "bert.encoder.layer.0.attention.self.query";
const std::string value = "bert.encoder.layer.0.attention.self.value";

std::filesystem::path adapter_dir(const std::string& name) { return fixtures / name / "adapter"; }
std::filesystem::path base_path(const std::string& name) {
  return fixtures / name / "base.safetensors";
}

vera::io::layer_shapes shapes_of(const std::string& name) {
  const safetensors_file base(base_path(name));
  const safetensors_file weights(adapter_dir(name) / "adapter_model.safetensors");
  return vera::io::layer_shapes_from_weights(base, vera::io::peft_layer_paths(weights), false);
}

vera::io::peft_adapter<float> load_case(const std::string& name) {
  return vera::io::load_peft_adapter<float>(adapter_dir(name), shapes_of(name));
}

std::size_t count_kind(const std::vector<vera::io::trained_tensor>& trained, trained_kind kind) {
  return static_cast<std::size_t>(std::count_if(
      trained.begin(), trained.end(), [kind](const auto& t) { return t.kind == kind; }));
}

bool same_bytes(const vera::io::safetensors_view& a, const vera::io::tensor_info& x,
                const vera::io::safetensors_view& b, const vera::io::tensor_info& y) {
  return x.type == y.type && x.shape == y.shape && x.byte_size() == y.byte_size() &&
         std::memcmp(a.bytes(x), b.bytes(y), x.byte_size()) == 0;
}

// Largest difference two float32 evaluations of W0 + Σ_k b_i B_ik d_k A_kj may show, element by
// element: each is within γ(r + 3)·S of the exact value (the two scalings, the r-term product,
// the final add), S = |W0| + Σ_k |b_i B_ik d_k A_kj|, γ(n) = n u / (1 - n u), u = 2^-24.
Eigen::MatrixXd merge_bound(const Eigen::MatrixXd& w0, const vera::adapter<float>& layer) {
  const double u = std::ldexp(1.0, -24);
  const double n = static_cast<double>(layer.rank() + 3);
  const double gamma = n * u / (1.0 - n * u);
  const Eigen::MatrixXd b_scaled =
      layer.lambda_b().cast<double>().cwiseAbs().asDiagonal() * layer.b().cast<double>().cwiseAbs();
  const Eigen::MatrixXd a_scaled =
      layer.lambda_d().cast<double>().cwiseAbs().asDiagonal() * layer.a().cast<double>().cwiseAbs();
  return 2.0 * gamma * (w0.cwiseAbs() + b_scaled * a_scaled);
}

// Every tensor of `ours` against PEFT's merged model: the adapted weights within merge_bound,
// every other tensor (replaced or copied) bit for bit.
void check_against_peft(const vera::io::safetensors_view& ours, const std::string& name,
                        const vera::io::model_adapter<float>& model) {
  const safetensors_file peft(fixtures / name / "merged.safetensors");
  const safetensors_file base(base_path(name));
  REQUIRE(ours.tensors().size() == peft.tensors().size());
  for (const auto& expected : peft.tensors()) {
    INFO(name << ": " << expected.name);
    const auto* got = ours.find(expected.name);
    REQUIRE(got != nullptr);
    const auto path = vera::io::detail::strip_suffix(expected.name, ".weight");
    if (!path.empty() && model.contains(path)) {
      const Eigen::MatrixXd w0 = vera::io::read_matrix<double>(base, expected.name);
      const Eigen::MatrixXd mine = vera::io::read_matrix<double>(ours, *got);
      const Eigen::MatrixXd theirs = vera::io::read_matrix<double>(peft, expected);
      const Eigen::MatrixXd bound = merge_bound(w0, model.at(path));
      CHECK(((mine - theirs).cwiseAbs().array() <= bound.array()).all());
      CHECK(mine != w0);
    } else {
      CHECK(same_bytes(ours, *got, peft, expected));
    }
  }
}

// A copy of a case's adapter with its tensors rewritten by `edit` and, optionally, another config.
struct edited_adapter {
  vera_test::scratch_dir dir;

  edited_adapter(const std::string& name,
                 const std::function<void(vera::io::safetensors_writer&,
                                          const vera::io::safetensors_view&)>& edit,
                 const std::function<void(nlohmann::json&)>& edit_config = {}) {
    const safetensors_file original(adapter_dir(name) / "adapter_model.safetensors");
    vera::io::safetensors_writer writer;
    edit(writer, original);
    writer.write(dir / "adapter_model.safetensors");
    auto config = nlohmann::json::parse(
        vera::io::read_text_file(adapter_dir(name) / "adapter_config.json", 1 << 20));
    if (edit_config) edit_config(config);
    const std::string text = config.dump(2);
    vera_test::write_bytes(dir / "adapter_config.json",
                           std::vector<unsigned char>(text.begin(), text.end()));
  }
  const std::filesystem::path& path() const { return dir.path(); }
};

void copy_all(vera::io::safetensors_writer& writer, const vera::io::safetensors_view& from) {
  for (const auto& t : from.tensors()) writer.add_bytes(t.name, t.type, t.shape, from.bytes(t));
}

// The base model of a case with `edit` deciding, per tensor, to copy it (true) or not.
std::vector<unsigned char> edited_base(
    const std::string& name,
    const std::function<bool(vera::io::safetensors_writer&, const vera::io::safetensors_view&,
                             const vera::io::tensor_info&)>& edit) {
  const safetensors_file base(base_path(name));
  vera::io::safetensors_writer writer;
  for (const auto& t : base.tensors()) {
    if (edit(writer, base, t)) writer.add_bytes(t.name, t.type, t.shape, base.bytes(t));
  }
  return writer.serialize();
}

}  // namespace

TEST_CASE("sequence-classification adapters keep the classifier and the trained biases",
          "[io][peft][task]") {
  struct expected_case {
    std::string name;
    std::size_t modules, biases, copies;
    bool projection;
  };
  for (const auto& c : std::vector<expected_case>{{"seq_cls_bias_none", 2, 0, 0, true},
                                                  {"seq_cls_bias_vera_only", 2, 2, 0, false},
                                                  {"seq_cls_bias_all", 2, 10, 2, true}}) {
    INFO(c.name);
    const auto loaded = load_case(c.name);
    CHECK(loaded.model.size() == 2);
    CHECK(loaded.report.prefixed_keys);
    CHECK(loaded.report.projection_in_file == c.projection);
    CHECK(loaded.report.warnings.empty());
    CHECK(loaded.report.ignored_tensors.empty());
    CHECK(loaded.config.task_type == std::optional<std::string>("SEQ_CLS"));
    CHECK(count_kind(loaded.trained, trained_kind::module_to_save) == c.modules);
    CHECK(count_kind(loaded.trained, trained_kind::bias) == c.biases);
    CHECK(count_kind(loaded.trained, trained_kind::wrapper_copy) == c.copies);

    const auto* classifier = loaded.find_trained("classifier.weight");
    REQUIRE(classifier != nullptr);
    CHECK(classifier->key == "classifier.weight");
    CHECK(classifier->type == vera::io::dtype::f32);
    CHECK(classifier->shape == std::vector<std::uint64_t>{3, 16});
    const safetensors_file weights(adapter_dir(c.name) / "adapter_model.safetensors");
    const auto& stored = weights.at("base_model.model.classifier.weight");
    CHECK(classifier->bytes ==
          std::vector<unsigned char>(weights.bytes(stored), weights.bytes(stored) + stored.byte_size()));
    CHECK(classifier->values<float>() == weights.values<float>(stored));

    // PEFT saves an adapted layer's bias from its wrapper; it replaces the layer's own bias.
    const auto* query_bias = loaded.find_trained(query + ".bias");
    CHECK((query_bias != nullptr) == (c.biases > 0));
    if (query_bias != nullptr) {
      CHECK(query_bias->key == query + ".base_layer.bias");
      CHECK(query_bias->kind == trained_kind::bias);
    }
    if (c.copies > 0) {
      CHECK(loaded.find_trained("classifier.original_module.bias") == nullptr);
      const auto copy = std::find_if(loaded.trained.begin(), loaded.trained.end(), [](const auto& t) {
        return t.key == "classifier.original_module.bias";
      });
      REQUIRE(copy != loaded.trained.end());
      CHECK(copy->kind == trained_kind::wrapper_copy);
      CHECK(copy->target.empty());
    }
    CHECK(std::is_sorted(loaded.trained.begin(), loaded.trained.end(),
                         [](const auto& a, const auto& b) { return a.key < b.key; }));
  }
}

TEST_CASE("a merge equals PEFT's merge_and_unload: adapted weights within the float32 bound, "
          "classifier and biases bit for bit",
          "[io][peft][task][merge]") {
  for (const auto& name : all_cases) {
    const auto loaded = load_case(name);
    const safetensors_file base(base_path(name));
    vera::io::safetensors_writer writer;
    vera::io::add_merged_model(writer, base, loaded);
    const auto image = writer.serialize();
    const vera::io::safetensors_view merged(image.data(), image.size());
    CHECK(merged.metadata() == base.metadata());
    check_against_peft(merged, name, loaded.model);
    // Every replaced tensor changed: the fixture perturbed all of them.
    for (const auto& t : loaded.trained) {
      if (t.target.empty()) continue;
      INFO(t.target);
      CHECK_FALSE(same_bytes(merged, merged.at(t.target), base, base.at(t.target)));
    }
  }
}

TEST_CASE("a sharded merge puts the classifier and the biases into the shards that hold them",
          "[io][peft][task][merge]") {
  const std::string name = "seq_cls_bias_all";
  const auto loaded = load_case(name);
  const safetensors_file base(base_path(name));
  vera_test::scratch_dir dir;
  const auto index = vera::io::read_shard_index(vera_test::write_two_shards(base, dir));
  vera::io::merge_sharded_model(index, loaded.model, dir / "merged", {}, {}, loaded.trained);

  vera::io::safetensors_writer single;
  vera::io::add_merged_model(single, base, loaded);
  const auto image = single.serialize();
  const vera::io::safetensors_view whole(image.data(), image.size());
  for (const auto& shard : index.shards) {
    const safetensors_file part(dir / "merged" / shard);
    for (const auto& t : part.tensors()) {
      INFO(t.name);
      CHECK(same_bytes(part, t, whole, whole.at(t.name)));
    }
  }
}

TEST_CASE("a re-save writes PEFT's tensors byte for byte and its config field for field",
          "[io][peft][task][save]") {
  for (const auto& name : all_cases) {
    INFO(name);
    const auto loaded = load_case(name);
    vera_test::scratch_dir dir;
    vera::io::save_options options;
    options.save_projection = loaded.report.projection_in_file;
    vera::io::save_peft_adapter(loaded, dir.path(), options);

    const safetensors_file original(adapter_dir(name) / "adapter_model.safetensors");
    const safetensors_file saved(dir / "adapter_model.safetensors");
    REQUIRE(saved.tensors().size() == original.tensors().size());
    for (const auto& t : original.tensors()) {
      INFO(t.name);
      REQUIRE(saved.contains(t.name));
      CHECK(same_bytes(saved, saved.at(t.name), original, t));
    }
    const auto peft_config = nlohmann::json::parse(
        vera::io::read_text_file(adapter_dir(name) / "adapter_config.json", 1 << 20));
    const auto our_config =
        nlohmann::json::parse(vera::io::read_text_file(dir / "adapter_config.json", 1 << 20));
    CHECK(our_config == peft_config);

    const auto again = vera::io::load_peft_adapter<float>(dir.path(), shapes_of(name));
    REQUIRE(again.trained.size() == loaded.trained.size());
    for (std::size_t i = 0; i < again.trained.size(); ++i) {
      CHECK(again.trained[i].key == loaded.trained[i].key);
      CHECK(again.trained[i].bytes == loaded.trained[i].bytes);
    }
  }
}

TEST_CASE("a LoRA export carries modules_to_save and the biases; its product merges as PEFT's",
          "[io][peft][task][lora]") {
  for (const auto& name : all_cases) {
    INFO(name);
    const auto loaded = load_case(name);
    vera_test::scratch_dir dir;
    vera::io::export_lora(loaded, dir.path());
    const auto config =
        nlohmann::json::parse(vera::io::read_text_file(dir / "adapter_config.json", 1 << 20));
    CHECK(config.at("peft_type") == "LORA");
    CHECK(config.at("modules_to_save") == nlohmann::json({"classifier", "score"}));
    CHECK(config.at("bias") == (name == "seq_cls_bias_none"        ? "none"
                                : name == "seq_cls_bias_vera_only" ? "lora_only"
                                                                   : "all"));
    CHECK(config.at("task_type") == "SEQ_CLS");

    const safetensors_file lora(dir / "adapter_model.safetensors");
    const safetensors_file original(adapter_dir(name) / "adapter_model.safetensors");
    CHECK(lora.tensors().size() == 2 * loaded.model.size() + loaded.trained.size());
    for (const auto& t : loaded.trained) {
      INFO(t.key);
      const std::string key = "base_model.model." + t.key;
      REQUIRE(lora.contains(key));
      CHECK(same_bytes(lora, lora.at(key), original, original.at(key)));
    }
    // W0 + lora_B lora_A, in double, against PEFT's float32 merge of the VeRA adapter.
    const safetensors_file base(base_path(name));
    const safetensors_file peft(fixtures / name / "merged.safetensors");
    for (const auto& [path, layer] : loaded.model) {
      INFO(path);
      const Eigen::MatrixXd w0 = vera::io::read_matrix<double>(base, path + ".weight");
      const Eigen::MatrixXd a = vera::io::read_matrix<double>(lora, vera::io::detail::peft_lora_a_key(path));
      const Eigen::MatrixXd b = vera::io::read_matrix<double>(lora, vera::io::detail::peft_lora_b_key(path));
      const Eigen::MatrixXd merged = w0 + b * a;
      const Eigen::MatrixXd theirs = vera::io::read_matrix<double>(peft, path + ".weight");
      CHECK(((merged - theirs).cwiseAbs().array() <= merge_bound(w0, layer).array()).all());
    }
  }
}

TEST_CASE("keys without PEFT's base_model.model. prefix load as the prefixed ones do",
          "[io][peft][task]") {
  const std::string name = "seq_cls_bias_vera_only";
  const std::string prefix = "base_model.model.";
  const edited_adapter bare(name, [&](auto& writer, const auto& file) {
    for (const auto& t : file.tensors()) {
      REQUIRE(t.name.compare(0, prefix.size(), prefix) == 0);
      writer.add_bytes(t.name.substr(prefix.size()), t.type, t.shape, file.bytes(t));
    }
  });
  const safetensors_file bare_weights(bare.dir / "adapter_model.safetensors");
  CHECK(vera::io::peft_layer_paths(bare_weights) == std::vector<std::string>{query, value});
  const auto loaded = vera::io::load_peft_adapter<float>(bare.path(), shapes_of(name));
  const auto prefixed = load_case(name);
  CHECK_FALSE(loaded.report.prefixed_keys);
  for (const auto& [path, layer] : prefixed.model) {
    CHECK(loaded.model.at(path).lambda_b() == layer.lambda_b());
    CHECK(loaded.model.at(path).lambda_d() == layer.lambda_d());
  }
  REQUIRE(loaded.trained.size() == prefixed.trained.size());
  for (std::size_t i = 0; i < loaded.trained.size(); ++i) {
    CHECK(loaded.trained[i].key == prefixed.trained[i].key);
    CHECK(loaded.trained[i].target == prefixed.trained[i].target);
  }
  // A re-save writes PEFT's prefixed keys.
  vera_test::scratch_dir dir;
  vera::io::save_peft_adapter(loaded, dir.path());
  const safetensors_file saved(dir / "adapter_model.safetensors");
  const safetensors_file original(adapter_dir(name) / "adapter_model.safetensors");
  for (const auto& t : original.tensors()) CHECK(saved.contains(t.name));

  // A seed-only adapter saved without the prefix may name the projection without it too.
  const edited_adapter bare_projection("seq_cls_bias_none", [&](auto& writer, const auto& file) {
    for (const auto& t : file.tensors()) {
      std::string key = t.name;
      if (key.compare(0, prefix.size(), prefix) == 0) key = key.substr(prefix.size());
      if (key == "base_model.vera_A") key = "vera_A";
      writer.add_bytes(key, t.type, t.shape, file.bytes(t));
    }
  });
  const auto with_bare_a =
      vera::io::load_peft_adapter<float>(bare_projection.path(), shapes_of("seq_cls_bias_none"));
  CHECK(with_bare_a.report.used_saved_projection);
}

TEST_CASE("a config without r takes PEFT's default rank 256 and says so on a mismatch",
          "[io][peft][task]") {
  const edited_adapter no_rank(
      "seq_cls_bias_none", copy_all, [](nlohmann::json& config) { config.erase("r"); });
  CHECK(vera::io::vera_config::read(no_rank.path()).r == 256);
  CHECK_THROWS_MATCHES(
      vera::io::load_peft_adapter<float>(no_rank.path(), shapes_of("seq_cls_bias_none")),
      format_error,
      message_contains("expected [256] (r = 256, PEFT's default: adapter_config.json has no 'r')"));
}

TEST_CASE("tensors the config does not explain are refused, naming the field and the file",
          "[io][peft][task][hostile]") {
  const auto shapes = shapes_of("seq_cls_bias_vera_only");
  const auto load = [&](const std::filesystem::path& dir) {
    return vera::io::load_peft_adapter<float>(dir, shapes);
  };
  const std::string query_bias_key = "base_model.model." + query + ".base_layer.bias";

  const edited_adapter no_bias(
      "seq_cls_bias_vera_only", copy_all, [](nlohmann::json& c) { c["bias"] = "none"; });
  CHECK_THROWS_MATCHES(load(no_bias.path()), format_error,
                       message_contains("adapter_model.safetensors': tensor '" + query_bias_key +
                                        "' is not part of a VeRA adapter (and 1 more): no module "
                                        "in adapter_config.json's modules_to_save ('classifier', "
                                        "'score') matches it, and its bias = \"none\" trains no "
                                        "bias"));

  const edited_adapter no_modules(
      "seq_cls_bias_none", copy_all, [](nlohmann::json& c) { c["modules_to_save"] = nullptr; });
  CHECK_THROWS_MATCHES(load(no_modules.path()), format_error,
                       message_contains("tensor 'base_model.model.classifier.bias' is not part of "
                                        "a VeRA adapter (and 1 more): adapter_config.json lists "
                                        "no modules_to_save"));
  const edited_adapter other_modules(
      "seq_cls_bias_none", copy_all, [](nlohmann::json& c) { c["modules_to_save"] = {"head"}; });
  CHECK_THROWS_MATCHES(load(other_modules.path()), format_error,
                       message_contains("no module in adapter_config.json's modules_to_save ('head')"));

  const std::vector<float> sixteen(16, 0.5f);
  const edited_adapter other_bias("seq_cls_bias_vera_only", [&](auto& w, const auto& f) {
    copy_all(w, f);
    w.add("base_model.model.bert.pooler.dense.bias", vera::io::dtype::f32, {16}, sixteen.data());
  });
  CHECK_THROWS_MATCHES(load(other_bias.path()), format_error,
                       message_contains("its bias = \"vera_only\" trains only the adapted "
                                        "layers' biases"));
  vera::io::load_options lenient;
  lenient.allow_extra_tensors = true;
  const auto ignoring = vera::io::load_peft_adapter<float>(other_bias.path(), shapes, lenient);
  CHECK(ignoring.report.ignored_tensors ==
        std::vector<std::string>{"base_model.model.bert.pooler.dense.bias"});
  CHECK(ignoring.trained.size() == 4);

  const edited_adapter twice("seq_cls_bias_all", [&](auto& w, const auto& f) {
    copy_all(w, f);
    w.add("base_model.model." + query + ".bias", vera::io::dtype::f32, {16}, sixteen.data());
  });
  CHECK_THROWS_MATCHES(
      vera::io::load_peft_adapter<float>(twice.path(), shapes_of("seq_cls_bias_all")), format_error,
      message_contains("both replace the base model's '" + query + ".bias'"));

  std::vector<float> nan_bias(16, 0.0f);
  nan_bias[3] = std::numeric_limits<float>::quiet_NaN();
  const edited_adapter nan("seq_cls_bias_vera_only", [&](auto& w, const auto& f) {
    for (const auto& t : f.tensors()) {
      if (t.name != query_bias_key) w.add_bytes(t.name, t.type, t.shape, f.bytes(t));
    }
    w.add(query_bias_key, vera::io::dtype::f32, {16}, nan_bias.data());
  });
  CHECK_THROWS_MATCHES(load(nan.path()), format_error,
                       message_contains("'" + query_bias_key + "' element 3 is NaN"));

  const edited_adapter query_copy("seq_cls_bias_none", [&](auto& w, const auto& f) {
    copy_all(w, f);
    std::vector<float> weight(16 * 16, 0.5f);
    w.add("base_model.model." + query + ".weight", vera::io::dtype::f32, {16, 16}, weight.data());
  }, [](nlohmann::json& c) { c["modules_to_save"] = {"classifier", "query"}; });
  CHECK_THROWS_MATCHES(load(query_copy.path()), format_error,
                       message_contains("would replace '" + query + ".weight', the weight VeRA adapts"));
}

TEST_CASE("merges that cannot apply a trained tensor write nothing and say why",
          "[io][peft][task][merge][hostile]") {
  const auto loaded = load_case("seq_cls_bias_vera_only");
  const auto refuse = [&](const std::vector<unsigned char>& image, const std::string& expected) {
    const vera::io::safetensors_view base(image.data(), image.size(), "'edited.safetensors'");
    vera::io::safetensors_writer writer;
    CHECK_THROWS_MATCHES(vera::io::add_merged_model(writer, base, loaded), format_error,
                         message_contains(expected));
    CHECK(writer.data_size() == 0);
  };
  refuse(edited_base("seq_cls_bias_vera_only",
                     [](auto&, const auto&, const auto& t) {
                       return t.name.compare(0, 10, "classifier") != 0;
                     }),
         "'edited.safetensors': no tensor named 'classifier.bias' for the adapter's "
         "modules_to_save tensor 'classifier.bias' (and 1 more: 'classifier.weight')");
  refuse(edited_base("seq_cls_bias_vera_only",
                     [](auto& w, const auto&, const auto& t) {
                       if (t.name != "classifier.weight") return true;
                       const std::vector<float> two_rows(2 * 16, 1.0f);
                       w.add(t.name, vera::io::dtype::f32, {2, 16}, two_rows.data());
                       return false;
                     }),
         "tensor 'classifier.weight' has shape [2, 16] but the adapter's modules_to_save tensor "
         "'classifier.weight' that replaces it has [3, 16]");
  refuse(edited_base("seq_cls_bias_vera_only",
                     [](auto& w, const auto& base, const auto& t) {
                       if (t.name != "classifier.weight") return true;
                       w.add_bytes(t.name, vera::io::dtype::i8, {3, 16}, base.bytes(t));
                       return false;
                     }),
         "cannot replace 'classifier.weight' of dtype I8 by the adapter's F32 tensor "
         "'classifier.weight' (quantized weights are not supported)");
  refuse(edited_base("seq_cls_bias_vera_only",
                     [](auto& w, const auto& base, const auto& t) {
                       if (t.name != query + ".weight") return true;
                       w.add_bytes(t.name, vera::io::dtype::u8, {16, 64}, base.bytes(t));
                       return false;
                     }),
         "cannot merge into '" + query + ".weight' of dtype U8 (quantized weights are not supported)");
  refuse(edited_base("seq_cls_bias_vera_only",
                     [](auto&, const auto&, const auto& t) {
                       return t.name != query + ".weight" && t.name != value + ".weight";
                     }),
         "no tensor named '" + query + ".weight' for adapted layer '" + query +
             "' (and 1 more adapted layers without a weight: '" + value + "')");

  // The CLI and the loader read shapes first: the same count there.
  const auto image = edited_base("seq_cls_bias_vera_only", [](auto&, const auto&, const auto& t) {
    return t.name != query + ".weight" && t.name != value + ".weight";
  });
  const vera::io::safetensors_view base(image.data(), image.size());
  CHECK_THROWS_MATCHES(vera::io::layer_shapes_from_weights(base, {query, value}, false),
                       format_error, message_contains("(and 1 more adapted layers without a weight"));

  // Into a bfloat16 base the classifier is stored rounded once, as PEFT's load casts it.
  const auto bf16 = edited_base("seq_cls_bias_vera_only", [](auto& w, const auto& b, const auto& t) {
    if (t.name != "classifier.weight") return true;
    const auto values = b.template values<float>(t);
    w.add(t.name, vera::io::dtype::bf16, t.shape, values.data());
    return false;
  });
  const vera::io::safetensors_view bf16_base(bf16.data(), bf16.size());
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, bf16_base, loaded);
  const auto merged_image = writer.serialize();
  const vera::io::safetensors_view merged(merged_image.data(), merged_image.size());
  CHECK(merged.at("classifier.weight").type == vera::io::dtype::bf16);
  const auto expected = loaded.find_trained("classifier.weight")->values<float>();
  const auto got = merged.values<float>("classifier.weight");
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i] == vera::io::detail::bfloat16_to_float(vera::io::detail::float_to_bfloat16(expected[i])));
  }
}

TEST_CASE("trained tensors are written back only where PEFT would load them",
          "[io][peft][task][save][hostile]") {
  auto loaded = load_case("seq_cls_bias_vera_only");
  vera_test::scratch_dir dir;
  auto no_modules = loaded.config;
  no_modules.modules_to_save.reset();
  CHECK_THROWS_MATCHES(
      vera::io::save_peft_adapter(loaded.model, dir / "a", {}, no_modules, loaded.trained),
      vera::value_error, message_contains("the config's field 'modules_to_save' is empty"));
  auto no_bias = loaded.config;
  no_bias.bias = vera::io::bias_mode::none;
  CHECK_THROWS_MATCHES(
      vera::io::export_lora(loaded.model, dir / "b", no_bias, vera::io::dtype::f32, loaded.trained),
      vera::value_error, message_contains("export_lora: '" + query +
                                          ".base_layer.bias' is a trained bias but the config's "
                                          "field 'bias' is \"none\""));
  auto short_bytes = loaded;
  short_bytes.trained.front().bytes.pop_back();
  CHECK_THROWS_MATCHES(vera::io::save_peft_adapter(short_bytes, dir / "c"), vera::value_error,
                       message_contains("bytes, but dtype"));
  CHECK(dir.entries().empty());
}

TEST_CASE("read_matrix keeps PyTorch's row-major layout and converts the dtype", "[io][matrix]") {
  const safetensors_file base(base_path("seq_cls_bias_none"));
  const auto& info = base.at(query + ".weight");
  const auto values = base.values<float>(info);
  const Eigen::MatrixXf w = vera::io::read_matrix<float>(base, query + ".weight");
  REQUIRE(w.rows() == 16);
  REQUIRE(w.cols() == 16);
  CHECK(w(0, 1) == values[1]);   // row 0 is contiguous in the file
  CHECK(w(1, 0) == values[16]);
  // The mistake it prevents: a column-major map of a square weight reads it transposed.
  const Eigen::Map<const Eigen::MatrixXf> transposed(values.data(), 16, 16);
  CHECK(transposed == w.transpose());
  CHECK(transposed != w);

  const Eigen::VectorXd bias = vera::io::read_vector<double>(base, query + ".bias");
  CHECK(bias.size() == 16);
  CHECK(bias(5) == static_cast<double>(base.values<float>(query + ".bias")[5]));

  const std::vector<float> six{1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  vera::io::safetensors_writer writer;
  writer.add("half", vera::io::dtype::bf16, {2, 3}, six.data());
  writer.add("vector", vera::io::dtype::f32, {6}, six.data());
  writer.add_bytes("ints", vera::io::dtype::i32, {2, 3}, reinterpret_cast<const unsigned char*>(six.data()));
  const auto image = writer.serialize();
  const vera::io::safetensors_view file(image.data(), image.size(), "'m.safetensors'");
  const Eigen::MatrixXd half = vera::io::read_matrix<double>(file, "half");
  CHECK(half(1, 0) == 4.0);
  CHECK_THROWS_MATCHES(vera::io::read_matrix<float>(file, "vector"), format_error,
                       message_contains("'m.safetensors': tensor 'vector' has shape [6], expected a 2-D matrix"));
  CHECK_THROWS_MATCHES(vera::io::read_vector<float>(file, "half"), format_error,
                       message_contains("expected a 1-D vector"));
  CHECK_THROWS_MATCHES(vera::io::read_matrix<float>(file, "ints"), format_error,
                       message_contains("tensor 'ints' has dtype I32"));
  CHECK_THROWS_MATCHES(vera::io::read_matrix<float>(file, "nothing"), format_error,
                       message_contains("no tensor named 'nothing'"));
}

TEST_CASE("model_adapter::at suggests the module path for a PEFT key", "[io][peft][task]") {
  const auto loaded = load_case("seq_cls_bias_none");
  CHECK_THROWS_MATCHES(loaded.model.at("base_model.model." + query), vera::value_error,
                       message_contains("did you mean '" + query + "'?"));
  CHECK_THROWS_MATCHES(loaded.model.at("base_model.model." + query + ".vera_lambda_b"),
                       vera::value_error, message_contains("did you mean '" + query + "'?"));
  CHECK_THROWS_MATCHES(loaded.model.at("classifier"), vera::value_error,
                       message_contains("no adapted layer 'classifier'; the 2 adapted layers "
                                        "include '" + query + "', '" + value + "'"));
}
