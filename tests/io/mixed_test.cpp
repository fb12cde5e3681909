// SPDX-License-Identifier: Apache-2.0
// A model whose adapted layers mix transformers' Conv1D (weight in x out) and nn.Linear (out x in):
// per-layer layouts read from the weights, against PEFT's outputs and merges (fixtures from
// tools/make_peft_mixed_fixtures.py).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <vera/io.hpp>
#include <vera/vera.hpp>

#include "io_support.hpp"

using vera::io::safetensors_file;
using vera_test::message_contains;

namespace {

const auto fixtures = vera_test::peft_fixtures() / "mixed";
const auto adapter_dir = fixtures / "adapter";
const std::vector<std::string> layers{"attn.c_attn", "mlp.up", "mlp.square"};
// The square layer is an nn.Linear; its shape cannot tell, so the tests say so.
const vera::io::layer_layouts square_is_linear{{"mlp.square", false}};

vera::io::layer_shapes shapes_of(const std::string& base_name,
                                 const vera::io::layer_layouts& given = square_is_linear) {
  const safetensors_file base(fixtures / base_name);
  const safetensors_file weights(adapter_dir / vera::io::adapter_weights_file);
  return vera::io::adapted_layer_shapes(base, weights, vera::io::vera_config::read(adapter_dir), given);
}

template <class T>
vera::io::peft_adapter<T> load(const vera::io::layer_layouts& given = square_is_linear) {
  return vera::io::load_peft_adapter<T>(adapter_dir, shapes_of("base.safetensors", given));
}

std::vector<unsigned char> merged_image(const std::string& base_name,
                                        const vera::io::peft_adapter<float>& adapter) {
  const safetensors_file base(fixtures / base_name);
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, base, adapter);
  return writer.serialize();
}

// Elements of the adapted weights in `merged` that differ from PEFT's `<io_case>.<layer>.weight`.
Eigen::Index differing(const vera::io::safetensors_view& merged, const std::string& io_case) {
  const safetensors_file io(fixtures / "io.safetensors");
  Eigen::Index count = 0;
  for (const auto& layer : layers) {
    const auto& ours = merged.at(layer + ".weight");
    const auto& peft = io.at(io_case + "." + layer + ".weight");
    REQUIRE(ours.type == peft.type);
    REQUIRE(ours.shape == peft.shape);
    count += (vera::io::read_matrix<float>(merged, ours).array() !=
              vera::io::read_matrix<float>(io, peft).array())
                 .count();
  }
  return count;
}

// Elementwise bound on two float32 merges computed in different orders: each is within
// γ(r + 3)·(|W0| + |Λb B| |Λd A|), γ(n) = n u / (1 - n u); the weight as stored (transposed for
// a Conv1D layer).
template <class T>
Eigen::MatrixXd merge_bound(const Eigen::MatrixXd& w0, const vera::adapter<T>& layer) {
  Eigen::MatrixXd delta = (layer.lambda_b().template cast<double>().cwiseAbs().asDiagonal() *
                           layer.b().template cast<double>().cwiseAbs()) *
                          (layer.lambda_d().template cast<double>().cwiseAbs().asDiagonal() *
                           layer.a().template cast<double>().cwiseAbs());
  if (layer.options().fan_in_fan_out) delta.transposeInPlace();
  const double n = static_cast<double>(layer.rank()) + 3;
  const double u = std::ldexp(1.0, -24);
  return 2.0 * (n * u / (1.0 - n * u)) * (w0.cwiseAbs() + delta);
}

double max_relative(const Eigen::MatrixXd& got, const Eigen::MatrixXd& want) {
  return (got - want).cwiseAbs().maxCoeff() / std::max(1.0, want.cwiseAbs().maxCoeff());
}

// A base model and an adapter file in memory with the given weight shapes (lambda_b of length
// `out` per layer), for the layout rules alone.
struct synthetic {
  std::vector<unsigned char> base_image, adapter_image;
  std::vector<float> zeros = std::vector<float>(64, 0.0f);

  explicit synthetic(const std::vector<std::pair<std::string, std::vector<std::uint64_t>>>& weights,
                     const std::vector<std::uint64_t>& outs) {
    vera::io::safetensors_writer base, adapter;
    for (std::size_t k = 0; k < weights.size(); ++k) {
      base.add(weights[k].first + ".weight", vera::io::dtype::f32, weights[k].second, zeros.data());
      adapter.add(vera::io::detail::peft_lambda_b_key(weights[k].first), vera::io::dtype::f32, {outs[k]},
                  zeros.data());
      adapter.add(vera::io::detail::peft_lambda_d_key(weights[k].first), vera::io::dtype::f32, {4},
                  zeros.data());
    }
    base_image = base.serialize();
    adapter_image = adapter.serialize();
  }
  vera::io::layer_shapes shapes(bool config_fan_in_fan_out) const {
    vera::io::vera_config config;
    config.fan_in_fan_out = config_fan_in_fan_out;
    const vera::io::safetensors_view base(base_image.data(), base_image.size());
    const vera::io::safetensors_view adapter(adapter_image.data(), adapter_image.size());
    return vera::io::adapted_layer_shapes(base, adapter, config);
  }
};

}  // namespace

TEST_CASE("each layer's layout is read from its weight; a square one in a mixed model is refused",
          "[io][peft][mixed]") {
  // PEFT saved the value it set last (nn.Linear's), wrong for the Conv1D layer.
  CHECK_FALSE(vera::io::vera_config::read(adapter_dir).fan_in_fan_out);
  const auto shapes = shapes_of("base.safetensors");
  CHECK(shapes.at("attn.c_attn") == vera::io::layer_shape{12, 20, true});
  CHECK(shapes.at("mlp.up") == vera::io::layer_shape{20, 16, false});
  CHECK(shapes.at("mlp.square") == vera::io::layer_shape{16, 16, false});
  CHECK(shapes_of("base.safetensors", {{"mlp.square", true}}).at("mlp.square") ==
        vera::io::layer_shape{16, 16, true});

  CHECK_THROWS_MATCHES(shapes_of("base.safetensors", {}), vera::format_error,
                       message_contains("layer 'mlp.square'"));
  CHECK_THROWS_MATCHES(shapes_of("base.safetensors", {}), vera::format_error,
                       message_contains("mixed/base.safetensors'"));
  CHECK_THROWS_MATCHES(shapes_of("base.safetensors", {}), vera::format_error,
                       message_contains("'attn.c_attn' is stored in x out (Conv1D) and 'mlp.up' out x in"));
  CHECK_THROWS_MATCHES(shapes_of("base.safetensors", {}), vera::format_error,
                       message_contains("--conv1d mlp.square or --linear mlp.square"));
  // A given layout must agree with a weight that shows its own, and name an adapted layer.
  CHECK_THROWS_MATCHES(shapes_of("base.safetensors", {{"mlp.square", false}, {"attn.c_attn", false}}),
                       vera::value_error, message_contains("layer 'attn.c_attn' is given the layout"));
  CHECK_THROWS_MATCHES(shapes_of("base.safetensors", {{"mlp.square", false}, {"lm_head", true}}),
                       vera::value_error, message_contains("layer 'lm_head', which"));

  // The config's single flag for all layers, as before: the Conv1D layer's lambda_b does not fit.
  const safetensors_file base(fixtures / "base.safetensors");
  const auto uniform = vera::io::layer_shapes_from_weights(base, layers, false);
  CHECK_THROWS_MATCHES(vera::io::load_peft_adapter<float>(adapter_dir, uniform), vera::format_error,
                       message_contains("stored the other way"));
}

TEST_CASE("a square layer follows the other layers and the config when they agree",
          "[io][peft][mixed]") {
  // nn.Linear 5 -> 3 (3 x 5) and a square 4 x 4.
  const synthetic linear({{"lin", {3, 5}}, {"sq", {4, 4}}}, {3, 4});
  CHECK(linear.shapes(false).at("sq") == vera::io::layer_shape{4, 4, false});
  CHECK(linear.shapes(false).at("lin") == vera::io::layer_shape{5, 3, false});
  // PEFT saves the flag of the last module it adapted: true next to a Linear means a Conv1D too.
  CHECK_THROWS_MATCHES(linear.shapes(true), vera::format_error,
                       message_contains("adapter_config.json's fan_in_fan_out is true"));
  // Conv1D 5 -> 3 (5 x 3).
  const synthetic conv1d({{"conv", {5, 3}}, {"sq", {4, 4}}}, {3, 4});
  CHECK(conv1d.shapes(true).at("sq") == vera::io::layer_shape{4, 4, true});
  CHECK(conv1d.shapes(true).at("conv") == vera::io::layer_shape{5, 3, true});
  CHECK_THROWS_AS(conv1d.shapes(false), vera::format_error);
  // Square layers alone: the config decides.
  const synthetic square({{"sq", {4, 4}}}, {4});
  CHECK(square.shapes(true).at("sq") == vera::io::layer_shape{4, 4, true});
  CHECK(square.shapes(false).at("sq") == vera::io::layer_shape{4, 4, false});
  // A weight of which neither extent is out_features: not the adapter's base model.
  const synthetic wrong({{"lin", {3, 5}}}, {4});
  CHECK_THROWS_MATCHES(wrong.shapes(false), vera::format_error,
                       message_contains("neither extent of the base weight 'lin.weight' [3, 5]"));
}

TEST_CASE("the Conv1D fixture's layouts are read from its weights even when the config says false",
          "[io][peft][mixed]") {
  const auto dir = vera_test::peft_fixtures() / "conv1d_seed";
  const safetensors_file base(vera_test::peft_fixtures() / "conv1d_model.safetensors");
  const safetensors_file weights(dir / vera::io::adapter_weights_file);
  auto config = vera::io::vera_config::read(dir);
  REQUIRE(config.fan_in_fan_out);
  const auto expected = vera::io::adapted_layer_shapes(base, weights, config);
  config.fan_in_fan_out = false;
  CHECK(vera::io::adapted_layer_shapes(base, weights, config) == expected);
  CHECK(expected.at("transformer.h.0.attn.c_attn") == vera::io::layer_shape{12, 20, true});
}

TEST_CASE("a mixed model loads and applies as PEFT computes it", "[io][peft][mixed]") {
  const safetensors_file base(fixtures / "base.safetensors");
  const safetensors_file io(fixtures / "io.safetensors");
  const auto loaded = load<float>();
  CHECK(loaded.model.at("attn.c_attn").options().fan_in_fan_out);
  CHECK_FALSE(loaded.model.at("mlp.up").options().fan_in_fan_out);
  CHECK_FALSE(loaded.model.at("mlp.square").options().fan_in_fan_out);
  for (const auto& path : layers) {
    INFO(path);
    const Eigen::MatrixXf w0 = vera::io::read_matrix<float>(base, path + ".weight");
    const Eigen::VectorXf bias = vera::io::read_vector<float>(base, path + ".bias");
    const Eigen::MatrixXf x = vera::io::read_matrix<float>(io, "in." + path);
    const Eigen::MatrixXf want = vera::io::read_matrix<float>(io, "out." + path);
    const Eigen::MatrixXf y = vera::forward(x, w0, bias, loaded.model.at(path));
    CHECK((y - want).cwiseAbs().maxCoeff() <= 1e-6f * std::max(1.0f, want.cwiseAbs().maxCoeff()));
  }
  // The whole model in double against PEFT's float32 output.
  const auto wide = load<double>();
  Eigen::MatrixXd y = vera::io::read_matrix<double>(io, "x");
  for (const auto& path : layers) {
    y = vera::forward(Eigen::MatrixXd(y), vera::io::read_matrix<double>(base, path + ".weight"),
                      Eigen::VectorXd(vera::io::read_vector<double>(base, path + ".bias")),
                      wide.model.at(path));
  }
  CHECK(max_relative(y, vera::io::read_matrix<double>(io, "y")) <= 1e-6);

  // The test can fail: the square layer taken as a Conv1D computes something else.
  const auto as_conv1d = load<float>({{"mlp.square", true}});
  const Eigen::MatrixXf x = vera::io::read_matrix<float>(io, "in.mlp.square");
  const Eigen::MatrixXf wrong = vera::forward(x, vera::io::read_matrix<float>(base, "mlp.square.weight"),
                                              Eigen::VectorXf(vera::io::read_vector<float>(base, "mlp.square.bias")),
                                              as_conv1d.model.at("mlp.square"));
  CHECK((wrong - vera::io::read_matrix<float>(io, "out.mlp.square")).cwiseAbs().maxCoeff() > 1e-3f);
}

TEST_CASE("a mixed model merges as PEFT's merge_and_unload: float32 within the bound, halves bit "
          "for bit, sharded as single-file",
          "[io][peft][mixed][merge]") {
  const auto loaded = load<float>();
  const safetensors_file base(fixtures / "base.safetensors");
  const safetensors_file io(fixtures / "io.safetensors");
  const auto image = merged_image("base.safetensors", loaded);
  const vera::io::safetensors_view merged(image.data(), image.size());
  for (const auto& path : layers) {
    INFO(path);
    const Eigen::MatrixXd ours = vera::io::read_matrix<double>(merged, path + ".weight");
    const Eigen::MatrixXd peft = vera::io::read_matrix<double>(io, "merged." + path + ".weight");
    const Eigen::MatrixXd w0 = vera::io::read_matrix<double>(base, path + ".weight");
    CHECK(((ours - peft).cwiseAbs().array() <= merge_bound(w0, loaded.model.at(path)).array()).all());
    CHECK((ours - w0).cwiseAbs().maxCoeff() > 1e-3);  // the adapter changed it
  }
  for (const std::string half : {"f16", "bf16"}) {
    INFO(half);
    const auto half_image = merged_image("base_" + half + ".safetensors", loaded);
    const vera::io::safetensors_view half_merged(half_image.data(), half_image.size());
    CHECK(differing(half_merged, "merged_" + half) == 0);
    // The test can fail: with the square layer as a Conv1D its bits differ.
    const auto wrong_image = merged_image("base_" + half + ".safetensors", load<float>({{"mlp.square", true}}));
    const vera::io::safetensors_view wrong(wrong_image.data(), wrong_image.size());
    CHECK(differing(wrong, "merged_" + half) > 0);
  }

  // Sharded: the layouts read across shards, the shards equal to the single-file merge.
  const vera_test::scratch_dir dir;
  const auto index = vera::io::read_shard_index(vera_test::write_two_shards(base, dir));
  const safetensors_file weights(adapter_dir / vera::io::adapter_weights_file);
  const auto config = vera::io::vera_config::read(adapter_dir);
  CHECK(vera::io::adapted_layer_shapes(index, weights, config, square_is_linear) ==
        shapes_of("base.safetensors"));
  CHECK_THROWS_MATCHES(vera::io::adapted_layer_shapes(index, weights, config), vera::format_error,
                       message_contains("layer 'mlp.square'"));
  vera::io::merge_sharded_model(index, loaded.model, dir / "merged", {}, {}, loaded.trained);
  for (const auto& shard : index.shards) {
    const safetensors_file part(dir / "merged" / shard);
    for (const auto& t : part.tensors()) {
      INFO(t.name);
      const auto& whole = merged.at(t.name);
      CHECK(std::equal(part.bytes(t), part.bytes(t) + t.byte_size(), merged.bytes(whole)));
    }
  }
}

TEST_CASE("a mixed model re-saves as PEFT saved it and exports an exact LoRA adapter",
          "[io][peft][mixed]") {
  const auto loaded = load<float>();
  const vera_test::scratch_dir dir;
  vera::io::save_peft_adapter(loaded, dir / "copy");
  const safetensors_file ours(dir / "copy" / vera::io::adapter_weights_file);
  const safetensors_file peft(adapter_dir / vera::io::adapter_weights_file);
  CHECK(ours.tensors().size() == peft.tensors().size());
  for (const auto& t : peft.tensors()) {
    INFO(t.name);
    const auto& copied = ours.at(t.name);
    CHECK(copied.type == t.type);
    CHECK(copied.shape == t.shape);
    CHECK(std::equal(peft.bytes(t), peft.bytes(t) + t.byte_size(), ours.bytes(copied)));
  }
  const auto copy = vera::io::vera_config::read(dir / "copy");
  CHECK(copy.to_json() == vera::io::vera_config::read(adapter_dir).to_json());
  const auto reloaded = vera::io::load_peft_adapter<float>(dir / "copy", shapes_of("base.safetensors"));
  CHECK(reloaded.model.shapes() == loaded.model.shapes());

  // lora_B lora_A is ΔW (out x in), stored transposed into a Conv1D weight: W0 + ΔW is the merge.
  vera::io::export_lora(loaded, dir / "lora");
  const safetensors_file lora(dir / "lora" / vera::io::adapter_weights_file);
  const safetensors_file base(fixtures / "base.safetensors");
  const safetensors_file io(fixtures / "io.safetensors");
  for (const auto& path : layers) {
    INFO(path);
    const Eigen::MatrixXd product = vera::io::read_matrix<double>(lora, vera::io::detail::peft_lora_b_key(path)) *
                                    vera::io::read_matrix<double>(lora, vera::io::detail::peft_lora_a_key(path));
    const auto& layer = loaded.model.at(path);
    const Eigen::MatrixXd w0 = vera::io::read_matrix<double>(base, path + ".weight");
    const Eigen::MatrixXd ours =
        w0 + (layer.options().fan_in_fan_out ? Eigen::MatrixXd(product.transpose()) : product);
    const Eigen::MatrixXd peft = vera::io::read_matrix<double>(io, "merged." + path + ".weight");
    CHECK(((ours - peft).cwiseAbs().array() <= merge_bound(w0, layer).array()).all());
  }
}
