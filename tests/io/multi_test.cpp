// SPDX-License-Identifier: Apache-2.0
// Merges into float16/bfloat16 models and several adapters on one model, against PEFT's outputs
// and merge_and_unload (fixtures from tools/make_peft_multi_fixtures.py).
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <vera/io.hpp>
#include <vera/vera.hpp>

#include "io_support.hpp"

using vera::io::safetensors_file;
using vera_test::message_contains;

namespace {

const auto fixtures = vera_test::peft_fixtures() / "multi";
const std::vector<std::string> layers{"q", "up", "down"};

vera::io::layer_shapes shapes_for(const std::filesystem::path& adapter) {
  const safetensors_file base(fixtures / "base.safetensors");
  const safetensors_file weights(adapter / vera::io::adapter_weights_file);
  return vera::io::layer_shapes_from_weights(base, vera::io::peft_layer_paths(weights), false);
}

vera::io::peft_adapter<float> load(const std::string& name) {
  return vera::io::load_peft_adapter<float>(fixtures / name, shapes_for(fixtures / name));
}

// Elements of the adapted weights in `merged` that differ from PEFT's `<io_case>.<layer>.weight`.
Eigen::Index differing(const vera::io::safetensors_view& merged, const std::string& io_case,
                       const std::vector<std::string>& adapted) {
  const safetensors_file io(fixtures / "io.safetensors");
  Eigen::Index count = 0;
  for (const auto& layer : adapted) {
    const auto& ours = merged.at(layer + ".weight");
    const auto& peft = io.at(io_case + "." + layer + ".weight");
    REQUIRE(ours.type == peft.type);
    REQUIRE(ours.shape == peft.shape);
    const Eigen::MatrixXf a = vera::io::read_matrix<float>(merged, ours);
    const Eigen::MatrixXf b = vera::io::read_matrix<float>(io, peft);
    count += (a.array() != b.array()).count();
  }
  return count;
}

std::vector<unsigned char> merged_image(const std::string& base_name,
                                        const vera::io::peft_adapter<float>& adapter,
                                        const vera::io::merge_options& options = {}) {
  const safetensors_file base(fixtures / base_name);
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, base, adapter, options);
  return writer.serialize();
}

// A copy of multi/<name> with its tensors kept (those `keep` accepts) and its config edited.
struct edited_adapter {
  vera_test::scratch_dir dir;

  edited_adapter(const std::string& name, const std::function<void(nlohmann::json&)>& edit_config,
                 const std::function<bool(const std::string&)>& keep = {}) {
    const safetensors_file original(fixtures / name / vera::io::adapter_weights_file);
    vera::io::safetensors_writer writer;
    for (const auto& t : original.tensors()) {
      if (!keep || keep(t.name)) writer.add_bytes(t.name, t.type, t.shape, original.bytes(t));
    }
    writer.write(dir / vera::io::adapter_weights_file);
    auto config = nlohmann::json::parse(
        vera::io::read_text_file(fixtures / name / vera::io::adapter_config_file, 1 << 20));
    if (edit_config) edit_config(config);
    const std::string text = config.dump(2);
    vera_test::write_bytes(dir / vera::io::adapter_config_file,
                           std::vector<unsigned char>(text.begin(), text.end()));
  }
  const std::filesystem::path& path() const { return dir.path(); }
};

vera::io::layer_shapes all_shapes() {
  const safetensors_file base(fixtures / "base.safetensors");
  return vera::io::layer_shapes_from_weights(base, layers, false);
}

// Elementwise bound on the difference of two float32 merges of the same adapters in another
// order: each within γ(r + 3)·(|W0| + Σ_adapters |Λb B| |Λd A|), γ(n) = n u / (1 - n u).
template <class Model>
Eigen::MatrixXd merge_bound(const Eigen::MatrixXd& w0, const std::vector<const Model*>& models,
                            const std::string& path) {
  Eigen::MatrixXd magnitude = w0.cwiseAbs();
  double n = 3;
  for (const Model* model : models) {
    if (!model->contains(path)) continue;
    const auto& layer = model->at(path);
    magnitude += (layer.lambda_b().template cast<double>().cwiseAbs().asDiagonal() *
                  layer.b().template cast<double>().cwiseAbs()) *
                 (layer.lambda_d().template cast<double>().cwiseAbs().asDiagonal() *
                  layer.a().template cast<double>().cwiseAbs());
    n += static_cast<double>(layer.rank()) + 1;
  }
  const double u = std::ldexp(1.0, -24);
  return 2.0 * (n * u / (1.0 - n * u)) * magnitude;
}

// The model's output in double for `x`: each layer W0 x + bias plus the terms of the adapters
// that adapt it, as PEFT sums the active adapters' outputs.
Eigen::MatrixXd model_output(const Eigen::MatrixXd& x,
                             const std::vector<const vera::io::model_adapter<double>*>& models) {
  const safetensors_file base(fixtures / "base.safetensors");
  Eigen::MatrixXd y = x;
  for (const auto& path : layers) {
    const Eigen::MatrixXd w0 = vera::io::read_matrix<double>(base, path + ".weight");
    const Eigen::VectorXd bias = vera::io::read_vector<double>(base, path + ".bias");
    const Eigen::MatrixXd plain = (y * w0.transpose()).rowwise() + bias.transpose();
    Eigen::MatrixXd next = plain;
    for (const auto* model : models) {
      if (!model->contains(path)) continue;
      const Eigen::MatrixXd adapted = vera::forward(y, w0, bias, model->at(path));
      next += adapted - plain;
    }
    y = next;
  }
  return y;
}

double max_relative(const Eigen::MatrixXd& got, const Eigen::MatrixXd& want) {
  return (got - want).cwiseAbs().maxCoeff() / std::max(1.0, want.cwiseAbs().maxCoeff());
}

}  // namespace

TEST_CASE("merges into float16 and bfloat16 models equal PEFT's merge_and_unload bit for bit",
          "[io][peft][merge][half]") {
  // Seed only: PEFT rounds the regenerated A and B to the model's dtype. With the projection
  // saved in float32: PEFT computes with it unrounded. Both then add in float32, round once.
  for (const std::string adapter : {"first_seed", "first"}) {
    const auto loaded = load(adapter);
    CHECK(loaded.report.used_saved_projection == (adapter == "first"));
    for (const std::string half : {"f16", "bf16"}) {
      INFO(adapter << " onto " << half);
      const std::string io_case =
          "merged_" + half + (adapter == "first" ? "_projection" : "_seed");
      const auto image = merged_image("base_" + half + ".safetensors", loaded);
      const vera::io::safetensors_view merged(image.data(), image.size());
      CHECK(differing(merged, io_case, layers) == 0);

      // The test can fail: the other projection (rounded for a saved pair, unrounded for a
      // regenerated one) gives other bits.
      vera::io::merge_options other_projection;
      other_projection.match_peft_precision = adapter == "first";
      other_projection.projection_from_file = false;
      const safetensors_file base(fixtures / ("base_" + half + ".safetensors"));
      vera::io::safetensors_writer writer;
      vera::io::add_merged_model(writer, base, loaded.model, other_projection);
      const auto other = writer.serialize();
      const vera::io::safetensors_view other_view(other.data(), other.size());
      CHECK(differing(other_view, io_case, layers) > 0);
    }
  }
}

TEST_CASE("vera::io::peft_half_merge rounds the projection only for a seed-only adapter",
          "[io][peft][merge][half]") {
  const auto loaded = load("first");
  const auto& layer = loaded.model.at("up");
  const safetensors_file base(fixtures / "base_bf16.safetensors");
  auto with_file_pair = base.values<float>(base.at("up.weight"));
  auto with_rounded_pair = with_file_pair;
  vera::io::peft_half_merge(with_file_pair.data(), layer, vera::io::dtype::bf16, false);
  vera::io::peft_half_merge(with_rounded_pair.data(), layer, vera::io::dtype::bf16, true);
  CHECK(with_file_pair != with_rounded_pair);

  auto broken = loaded;
  broken.model.at("up").lambda_b().setConstant(3e38f);
  broken.model.at("up").lambda_d().setConstant(3e38f);
  auto values = base.values<float>(base.at("up.weight"));
  CHECK_THROWS_MATCHES(
      vera::io::peft_half_merge(values.data(), broken.model.at("up"), vera::io::dtype::bf16, true),
      vera::value_error, message_contains("merged weight is not finite at ("));
}

TEST_CASE("an adapter whose saved pair is larger than its layers need loads, applies and merges "
          "as PEFT does",
          "[io][peft][multi]") {
  // PEFT saves the model's pair (sized for the first adapter: 8 x 20, 20 x 8) with the second
  // adapter, which adapts q (16 -> 12) only and slices it.
  const auto loaded = vera::io::load_peft_adapter<double>(fixtures / "second", all_shapes());
  const auto& shared = loaded.model.shared_projection();
  CHECK(shared.max_in() == 20);
  CHECK(shared.max_out() == 20);
  CHECK(loaded.report.used_saved_projection);
  CHECK(loaded.report.projection_matches_seed());
  CHECK(loaded.report.warnings.empty());
  REQUIRE(loaded.model.size() == 1);
  const auto& q = loaded.model.at("q");
  const safetensors_file weights(fixtures / "second" / vera::io::adapter_weights_file);
  CHECK(Eigen::MatrixXd(q.a()) ==
        vera::io::read_matrix<double>(weights, "base_model.vera_A").leftCols(16));
  CHECK(Eigen::MatrixXd(q.b()) ==
        vera::io::read_matrix<double>(weights, "base_model.vera_B").topRows(12));

  const safetensors_file io(fixtures / "io.safetensors");
  const Eigen::MatrixXd x = vera::io::read_matrix<double>(io, "x");
  CHECK(max_relative(model_output(x, {&loaded.model}),
                     vera::io::read_matrix<double>(io, "y_second")) <= 1e-6);

  const auto as_float = vera::io::load_peft_adapter<float>(fixtures / "second", all_shapes());
  const safetensors_file base(fixtures / "base.safetensors");
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, base, as_float);
  const auto image = writer.serialize();
  const vera::io::safetensors_view merged(image.data(), image.size());
  for (const auto& path : layers) {
    INFO(path);
    const Eigen::MatrixXd ours = vera::io::read_matrix<double>(merged, path + ".weight");
    const Eigen::MatrixXd peft = vera::io::read_matrix<double>(io, "merged_second." + path + ".weight");
    const Eigen::MatrixXd w0 = vera::io::read_matrix<double>(base, path + ".weight");
    CHECK(((ours - peft).cwiseAbs().array() <=
           merge_bound(w0, std::vector<const vera::io::model_adapter<float>*>{&as_float.model}, path)
               .array())
              .all());
    CHECK((ours != w0) == (path == "q"));
  }

  // A re-save with the projection writes PEFT's tensors byte for byte; seed only is refused.
  vera_test::scratch_dir dir;
  vera::io::save_options with_projection;
  with_projection.save_projection = true;
  vera::io::save_peft_adapter(as_float, dir / "copy", with_projection);
  const safetensors_file copy(dir / "copy" / vera::io::adapter_weights_file);
  REQUIRE(copy.tensors().size() == weights.tensors().size());
  for (const auto& t : weights.tensors()) {
    INFO(t.name);
    const auto& mine = copy.at(t.name);
    CHECK(mine.shape == t.shape);
    CHECK(copy.values<float>(mine) == weights.values<float>(t));
  }
  CHECK_THROWS_MATCHES(vera::io::save_peft_adapter(as_float, dir / "seed"), vera::shape_error,
                       message_contains("PEFT sizes it from the layers"));
  CHECK_FALSE(std::filesystem::exists(dir / "seed"));
}

TEST_CASE("two adapters on one model: outputs summed, merged one after the other as PEFT does",
          "[io][peft][multi]") {
  const std::vector<std::filesystem::path> dirs{fixtures / "first", fixtures / "second"};
  const auto both = vera::io::load_peft_adapters<double>(dirs, all_shapes());
  REQUIRE(both.size() == 2);
  CHECK(both[1].model.shared_projection().a() == both[0].model.shared_projection().a());
  const safetensors_file io(fixtures / "io.safetensors");
  const Eigen::MatrixXd x = vera::io::read_matrix<double>(io, "x");
  CHECK(max_relative(model_output(x, {&both[0].model, &both[1].model}),
                     vera::io::read_matrix<double>(io, "y_both")) <= 1e-6);
  CHECK(max_relative(model_output(x, {&both[0].model}), vera::io::read_matrix<double>(io, "y_first")) <=
        1e-6);

  // float32: within the bound of a float32 merge; bfloat16: PEFT's bits (two roundings).
  const auto as_float = vera::io::load_peft_adapters<float>(dirs, all_shapes());
  const safetensors_file base(fixtures / "base.safetensors");
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, base, as_float);
  const auto image = writer.serialize();
  const vera::io::safetensors_view merged(image.data(), image.size());
  for (const auto& path : layers) {
    INFO(path);
    const Eigen::MatrixXd ours = vera::io::read_matrix<double>(merged, path + ".weight");
    const Eigen::MatrixXd peft = vera::io::read_matrix<double>(io, "merged_both." + path + ".weight");
    const Eigen::MatrixXd w0 = vera::io::read_matrix<double>(base, path + ".weight");
    const std::vector<const vera::io::model_adapter<float>*> models{&as_float[0].model,
                                                                    &as_float[1].model};
    CHECK(((ours - peft).cwiseAbs().array() <= merge_bound(w0, models, path).array()).all());
  }
  const safetensors_file base_bf16(fixtures / "base_bf16.safetensors");
  vera::io::safetensors_writer half_writer;
  vera::io::add_merged_model(half_writer, base_bf16, as_float);
  const auto half_image = half_writer.serialize();
  const vera::io::safetensors_view half(half_image.data(), half_image.size());
  CHECK(differing(half, "merged_bf16_both", layers) == 0);
  // Only the first adapter, for contrast: q then differs.
  const auto image_first = merged_image("base_bf16.safetensors", as_float[0]);
  const vera::io::safetensors_view first_only(image_first.data(), image_first.size());
  CHECK(differing(first_only, "merged_bf16_both", {"q"}) > 0);
}

TEST_CASE("adapters that PEFT would not hold on one model are refused, naming the field and file",
          "[io][peft][multi]") {
  const auto shapes = all_shapes();
  const auto first = fixtures / "first";
  const auto load_pair = [&](const std::filesystem::path& a, const std::filesystem::path& b) {
    return vera::io::load_peft_adapters<float>({a, b}, shapes);
  };
  const edited_adapter other_key("second", [](auto& c) { c["projection_prng_key"] = 78; });
  CHECK_THROWS_MATCHES(load_pair(first, other_key.path()), vera::format_error,
                       message_contains((other_key.path() / "adapter_config.json").string() +
                                        "': field 'projection_prng_key' is 78 but 77"));
  const edited_adapter other_rank("second", [](auto& c) { c["r"] = 4; });
  CHECK_THROWS_MATCHES(load_pair(first, other_rank.path()), vera::format_error,
                       message_contains("field 'r' is 4 but 8 in the first adapter's"));
  CHECK_THROWS_MATCHES(load_pair(first, fixtures / "first_seed"), vera::format_error,
                       message_contains("field 'save_projection' is false but true"));

  // A later seed-only adapter whose layers exceed the first one's projection (q only: 16 x 12).
  const edited_adapter q_only(
      "first_seed", {}, [](const std::string& name) { return name.find(".q.") != std::string::npos; });
  CHECK_THROWS_MATCHES(load_pair(q_only.path(), fixtures / "first_seed"), vera::format_error,
                       message_contains("PEFT refuses a later adapter whose layers are larger"));
  // A later saved pair of another shape than the first one's (here 8 x 24 / 24 x 8).
  vera_test::scratch_dir wide;
  vera::io::save_options with_projection;
  with_projection.save_projection = true;
  vera::io::save_peft_adapter(vera::io::model_adapter<float>(vera::projection<float>({77, 8, 24, 24}),
                                                             {{"q", {16, 12}}}),
                              wide / "adapter", with_projection);
  CHECK_THROWS_MATCHES(load_pair(first, wide / "adapter"), vera::format_error,
                       message_contains("tensor 'base_model.vera_A' is [8, 24] and 'base_model.vera_B' "
                                        "[24, 8], but the first adapter's pair is [8, 20] / [20, 8]"));
  CHECK_THROWS_AS(vera::io::load_peft_adapters<float>({}, shapes), vera::value_error);

  // Two adapters whose trained tensors replace one base tensor: nothing is written.
  auto pair = load_pair(first, fixtures / "second");
  vera::io::trained_tensor bias;
  bias.key = bias.target = "q.bias";
  bias.kind = vera::io::trained_kind::bias;
  bias.shape = {12};
  bias.bytes.assign(12 * 4, 0);
  pair[0].trained.push_back(bias);
  pair[1].trained.push_back(bias);
  const safetensors_file base(fixtures / "base.safetensors");
  vera::io::safetensors_writer writer;
  CHECK_THROWS_MATCHES(vera::io::add_merged_model(writer, base, pair), vera::value_error,
                       message_contains("two trained tensors replace 'q.bias'"));
  CHECK(writer.data_size() == 0);
}
