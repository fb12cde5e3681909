// SPDX-License-Identifier: Apache-2.0
// Tests of adapter_config.json: typed fields, round trips that keep unknown fields, clear errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include <vera/io/config.hpp>

#include "io_support.hpp"

using vera::format_error;
using vera::io::vera_config;
using vera_test::message_contains;

namespace {

const char* const minimal = R"({"peft_type": "VERA", "r": 16})";

std::string with_field(const std::string& field, const std::string& value) {
  return R"({"peft_type": "VERA", "r": 16, ")" + field + "\": " + value + "}";
}

}  // namespace

TEST_CASE("a config written by PEFT reads into typed fields", "[io][config]") {
  const auto config = vera_config::read(vera_test::peft_fixtures() / "linear_seed");
  CHECK(config.r == 8);
  CHECK(config.projection_prng_key == 1234);
  CHECK_FALSE(config.save_projection);
  auto targets = config.target_modules.names;
  std::sort(targets.begin(), targets.end());
  CHECK(targets == std::vector<std::string>{"down_proj", "q_proj", "up_proj"});
  CHECK_FALSE(config.target_modules.pattern.has_value());
  CHECK(config.d_initial == 0.1);
  CHECK(config.vera_dropout == 0.0);
  CHECK_FALSE(config.fan_in_fan_out);
  CHECK(config.bias == vera::io::bias_mode::none);
  CHECK_FALSE(config.init_weights);
  CHECK(config.inference_mode);
  CHECK_FALSE(config.modules_to_save.has_value());
  CHECK_FALSE(config.layers_to_transform.has_value());
  CHECK_FALSE(config.base_model_name_or_path.has_value());
  CHECK(config.json.at("peft_version") == "0.21.2");

  CHECK(vera_config::read(vera_test::peft_fixtures() / "conv1d_projection" / "adapter_config.json")
            .fan_in_fan_out);
}

TEST_CASE("a round trip keeps unknown fields and the original spelling", "[io][config]") {
  const auto original = vera_config::read(vera_test::peft_fixtures() / "linear_seed");
  CHECK(original.to_json() == original.json);  // nothing changed: identical JSON

  vera_test::scratch_dir dir;
  auto changed = original;
  changed.r = 32;
  changed.base_model_name_or_path = "meta-llama/Llama-3.2-1B";
  changed.write(dir / "adapter_config.json");
  CHECK(dir.entries() == std::vector<std::string>{"adapter_config.json"});
  const auto back = vera_config::read(dir.path());
  CHECK(back.r == 32);
  CHECK(back.base_model_name_or_path == "meta-llama/Llama-3.2-1B");
  CHECK(back.json.at("auto_mapping").at("base_model_class") == "TinyLinear");
  CHECK(back.json.at("peft_version") == "0.21.2");

  auto scalar = vera_config::parse(with_field("layers_to_transform", "3"));
  REQUIRE(scalar.layers_to_transform.has_value());
  CHECK(*scalar.layers_to_transform == std::vector<std::int64_t>{3});
  CHECK(scalar.to_json().at("layers_to_transform") == 3);
  scalar.layers_to_transform = std::vector<std::int64_t>{1, 2};
  CHECK(scalar.to_json().at("layers_to_transform") == nlohmann::json::array({1, 2}));

  const auto pattern = vera_config::parse(with_field("target_modules", R"(".*(q|v)_proj$")"));
  CHECK(pattern.target_modules.pattern == ".*(q|v)_proj$");
  CHECK(pattern.to_json().at("target_modules") == ".*(q|v)_proj$");
  const auto layers = vera_config::parse(with_field("layers_pattern", R"("layers")"));
  CHECK(*layers.layers_pattern == std::vector<std::string>{"layers"});
  CHECK(layers.to_json().at("layers_pattern") == "layers");
}

TEST_CASE("missing optional fields take PEFT's defaults", "[io][config]") {
  const auto config = vera_config::parse(minimal);
  CHECK(config.r == 16);
  CHECK(config.save_projection);  // PEFT's default
  CHECK(config.projection_prng_key == 0);
  CHECK(config.d_initial == 0.1);
  CHECK(config.init_weights);
  CHECK(config.target_modules.names.empty());
  CHECK(vera_config::parse(with_field("projection_prng_key", "-1")).projection_prng_key ==
        UINT64_MAX);
  CHECK(vera_config::parse(with_field("task_type", "null")).task_type == std::nullopt);
  CHECK(vera_config::parse(with_field("bias", R"("vera_only")")).bias ==
        vera::io::bias_mode::vera_only);
  // VeraConfig's default rank, for configs written by hand or by other tools.
  const auto no_rank = vera_config::parse(R"({"peft_type": "VERA"})");
  CHECK(no_rank.r == 256);
  CHECK_FALSE(no_rank.json.contains("r"));
  CHECK(no_rank.to_json().at("r") == 256);
}

TEST_CASE("wrong types, ranges and a missing peft_type are named", "[io][config]") {
  struct bad {
    std::string text;
    std::string expected;
  };
  const std::vector<bad> cases{
      {R"({"r": 8})", "field 'peft_type' is missing"},
      {R"({"peft_type": "LORA", "r": 8})", "is 'LORA', expected 'VERA'"},
      {R"({"peft_type": 7, "r": 8})", "field 'peft_type' is a JSON number"},
      {R"({"peft_type": "VERA", "r": "8"})",
       "field 'r' is a JSON string (\"8\"), expected an integer"},
      {R"({"peft_type": "VERA", "r": 0})", "field 'r' is 0, expected a positive rank"},
      {R"({"peft_type": "VERA", "r": -4})", "field 'r' is -4"},
      {R"({"peft_type": "VERA", "r": 8.5})", "field 'r' is a JSON number (8.5)"},
      {with_field("target_modules", "[\"q\", 3]"), "field 'target_modules[1]' is a JSON number"},
      {with_field("target_modules", "7"), "field 'target_modules' is a JSON number"},
      {with_field("projection_prng_key", "1.5"), "field 'projection_prng_key' is a JSON number"},
      {with_field("save_projection", "\"yes\""), "field 'save_projection' is a JSON string"},
      {with_field("vera_dropout", "1.5"), "expected a probability in [0, 1)"},
      {with_field("d_initial", "\"0.1\""), "field 'd_initial' is a JSON string"},
      {with_field("bias", "\"lora_only\""), "field 'bias' is 'lora_only'"},
      {with_field("modules_to_save", "\"classifier\""), "field 'modules_to_save' is a JSON string"},
      {with_field("layers_to_transform", "[0, \"1\"]"),
       "field 'layers_to_transform[1]' is a JSON string"},
      {with_field("layers_pattern", "{}"), "field 'layers_pattern' is a JSON object"},
      {with_field("task_type", "3"), "field 'task_type' is a JSON number"},
      {with_field("inference_mode", "1"), "field 'inference_mode' is a JSON number"},
      {R"({"peft_type": "VERA", "r": 8, "r": 9})", "field 'r' appears twice"},
      {R"([1, 2])", "expected a JSON object"},
      {R"({"peft_type": "VERA", "r": 8)", "not valid JSON"},
      {R"({"peft_type": "VERA", "r": NaN})", "not valid JSON"},
      {R"({"peft_type": "VERA", "r": 8, "cpu": 666666e666})", "not valid JSON"},
      {"{\"x\": " + std::string(200, '[') + std::string(200, ']') + "}",
       "nested more than 64 levels"},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    CHECK_THROWS_MATCHES(vera_config::parse(c.text, "cfg.json"), format_error,
                         message_contains(c.expected));
    CHECK_THROWS_MATCHES(vera_config::parse(c.text, "cfg.json"), format_error,
                         message_contains("cfg.json: "));
  }
}

TEST_CASE("config files: missing, oversized, written atomically", "[io][config]") {
  vera_test::scratch_dir dir;
  CHECK_THROWS_AS(vera_config::read(dir.path()), vera::io_error);
  const std::string huge(vera::io::detail::max_config_size + 1, ' ');
  vera_test::write_bytes(dir / "adapter_config.json",
                         std::vector<unsigned char>(huge.begin(), huge.end()));
  CHECK_THROWS_MATCHES(vera_config::read(dir.path()), format_error,
                       message_contains("more than the"));
  CHECK_THROWS_AS(vera_config::parse(minimal).write(dir / "no_such_dir" / "adapter_config.json"),
                  vera::io_error);
  CHECK(dir.entries() == std::vector<std::string>{"adapter_config.json"});
}

TEST_CASE("LoRA export config has alpha = r and the layer paths", "[io][config]") {
  auto source = vera_config::parse(with_field("fan_in_fan_out", "true"));
  source.task_type = "CAUSAL_LM";
  const auto lora =
      vera::io::lora_config_json(source, 16, {"model.layers.0.q_proj", "model.layers.0.v_proj"});
  CHECK(lora.at("peft_type") == "LORA");
  CHECK(lora.at("r") == 16);
  CHECK(lora.at("lora_alpha") == 16);
  CHECK(lora.at("fan_in_fan_out") == true);
  CHECK(lora.at("task_type") == "CAUSAL_LM");
  CHECK(lora.at("use_rslora") == false);
  CHECK(lora.at("target_modules") ==
        nlohmann::json::array({"model.layers.0.q_proj", "model.layers.0.v_proj"}));
}
