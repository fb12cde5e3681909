// SPDX-License-Identifier: Apache-2.0
// Tests against PEFT's own files: loading, forward/delta/merge equality, save, LoRA export,
// mismatches.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include <vera/io.hpp>
#include <vera/vera.hpp>

#include "io_support.hpp"

using vera::format_error;
using vera::io::layer_shapes;
using vera::io::safetensors_file;
using vera_test::message_contains;

namespace {

const auto fixtures = vera_test::peft_fixtures();

template <class T>
vera::row_matrix<T> matrix_of(const vera::io::safetensors_view& file, const std::string& name) {
  const auto& info = file.at(name);
  REQUIRE(info.shape.size() == 2);
  const auto values = file.values<T>(info);
  return Eigen::Map<const vera::row_matrix<T>>(values.data(),
                                               static_cast<Eigen::Index>(info.shape[0]),
                                               static_cast<Eigen::Index>(info.shape[1]));
}

template <class T>
vera::vector<T> vector_of(const vera::io::safetensors_view& file, const std::string& name) {
  const auto values = file.values<T>(name);
  return Eigen::Map<const vera::vector<T>>(values.data(), static_cast<Eigen::Index>(values.size()));
}

// Base shapes of the fixture model; lm_head is listed although it is not adapted.
layer_shapes model_shapes(const std::string& kind) {
  const safetensors_file model(fixtures / (kind + "_model.safetensors"));
  std::vector<std::string> paths;
  for (const auto& t : model.tensors()) {
    const std::string suffix = ".weight";
    if (t.name.size() > suffix.size() &&
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      paths.push_back(t.name.substr(0, t.name.size() - suffix.size()));
    }
  }
  return vera::io::layer_shapes_from_weights(model, paths, kind == "conv1d");
}

template <class A, class B>
double max_abs_diff(const A& a, const B& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
}

template <class M>
double scale_of(const M& m) {
  return std::max(1.0, m.template cast<double>().cwiseAbs().maxCoeff());
}

// Relative tolerance against PEFT: float results differ in summation order only; float64
// results are the same products summed in another order.
template <class T>
constexpr double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-14;

template <class M>
bool same_bits(const M& a, const M& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(),
                     sizeof(typename M::Scalar) * static_cast<std::size_t>(a.size())) == 0;
}

double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

// A copy of a fixture adapter directory whose weights file is replaced by `tensors`.
struct edited_adapter {
  vera_test::scratch_dir dir;

  edited_adapter(const std::string& fixture,
                 const std::function<void(vera::io::safetensors_writer&,
                                          const vera::io::safetensors_view&)>& edit,
                 const std::string& config_text = "") {
    const auto source = fixtures / fixture;
    const safetensors_file original(source / "adapter_model.safetensors");
    vera::io::safetensors_writer writer;
    edit(writer, original);
    writer.write(dir / "adapter_model.safetensors");
    const auto text = config_text.empty()
                          ? vera::io::read_text_file(source / "adapter_config.json", 1 << 20)
                          : config_text;
    vera_test::write_bytes(dir / "adapter_config.json",
                           std::vector<unsigned char>(text.begin(), text.end()));
  }
  const std::filesystem::path& path() const { return dir.path(); }
};

// Copies every tensor except those `skip` names.
void copy_tensors(vera::io::safetensors_writer& writer, const vera::io::safetensors_view& from,
                  const std::vector<std::string>& skip = {}) {
  for (const auto& t : from.tensors()) {
    if (std::find(skip.begin(), skip.end(), t.name) != skip.end()) continue;
    writer.add_bytes(t.name, t.type, t.shape, from.bytes(t));
  }
}

const std::string q_b = "base_model.model.model.layers.0.q_proj.vera_lambda_b";
const std::string q_d = "base_model.model.model.layers.0.q_proj.vera_lambda_d";

}  // namespace

TEST_CASE("vera regenerates PEFT's projection bit for bit", "[io][peft]") {
  for (const std::string kind : {"linear", "conv1d"}) {
    const safetensors_file io(fixtures / (kind + "_io.safetensors"));
    INFO(kind << " fixture made with torch " << io.metadata().at("torch") << " on "
              << io.metadata().at("cpu") << " (" << io.metadata().at("torch_cpu_capability")
              << ")");
    const auto a = matrix_of<float>(io, "vera_A");
    const auto b = matrix_of<float>(io, "vera_B");
    const vera::projection_spec spec{1234, a.rows(), a.cols(), b.rows()};
    const vera::projection<float> fused(spec);
    CHECK(same_bits(fused.a(), a));
    CHECK(same_bits(fused.b(), b));

    // torch's scalar kernel (ATEN_CPU_CAPABILITY=default) rounds twice: peft_rounding::separate.
    auto separate_spec = spec;
    separate_spec.rounding = vera::peft_rounding::separate;
    const vera::projection<float> separate(separate_spec);
    CHECK(same_bits(separate.a(), matrix_of<float>(io, "vera_A.default_kernel")));
    CHECK(same_bits(separate.b(), matrix_of<float>(io, "vera_B.default_kernel")));
    CHECK_FALSE(same_bits(separate.a(), a));
  }
}

TEMPLATE_TEST_CASE("a seed-only PEFT adapter loads and reproduces PEFT's outputs", "[io][peft]",
                   float, double) {
  for (const std::string kind : {"linear", "conv1d"}) {
    INFO(kind);
    const auto loaded =
        vera::io::load_peft_adapter<TestType>(fixtures / (kind + "_seed"), model_shapes(kind));
    CHECK_FALSE(loaded.report.projection_in_file);
    CHECK_FALSE(loaded.report.used_saved_projection);
    CHECK(loaded.report.warnings.empty());
    CHECK(loaded.model.size() == (kind == "linear" ? 3u : 2u));
    CHECK(loaded.model.options().fan_in_fan_out == (kind == "conv1d"));
    CHECK(loaded.model.shared_projection().max_in() == 20);
    CHECK(loaded.model.shared_projection().max_out() == 20);
    CHECK(loaded.model.shared_projection().rank() == 8);

    const safetensors_file model(fixtures / (kind + "_model.safetensors"));
    const safetensors_file io(fixtures / (kind + "_io.safetensors"));
    const std::string suffix = std::is_same_v<TestType, float> ? "" : ".f64";
    for (const auto& [path, layer] : loaded.model) {
      INFO(path);
      const auto w0 = matrix_of<TestType>(model, path + ".weight");
      const auto bias = vector_of<TestType>(model, path + ".bias");
      const auto x = matrix_of<TestType>(io, path + ".input" + suffix);
      const Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic> y =
          vera::forward(x, w0, bias, layer);
      const auto expected = matrix_of<TestType>(io, path + ".output" + suffix);
      CHECK(max_abs_diff(y, expected) <= tolerance<TestType> * scale_of(expected));

      const Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic> delta =
          vera::delta_weight(layer);
      const auto peft_delta = matrix_of<TestType>(io, path + ".delta_weight");
      CHECK(max_abs_diff(delta, peft_delta) <= 1e-5 * scale_of(peft_delta));

      Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic> merged = w0;
      vera::safe_merge(merged, layer);
      const auto peft_merged = matrix_of<TestType>(io, path + ".merged_weight");
      CHECK(max_abs_diff(merged, peft_merged) <= 1e-5 * scale_of(peft_merged));
    }
  }
}

TEST_CASE("the whole fixture model in float64 matches PEFT's float64 output", "[io][peft]") {
  const auto loaded =
      vera::io::load_peft_adapter<double>(fixtures / "linear_seed", model_shapes("linear"));
  const safetensors_file model(fixtures / "linear_model.safetensors");
  const safetensors_file io(fixtures / "linear_io.safetensors");
  Eigen::MatrixXd h = matrix_of<double>(io, "input");
  for (const std::string name : {"q_proj", "up_proj", "down_proj"}) {
    const std::string path = "model.layers.0." + name;
    const auto w0 = matrix_of<double>(model, path + ".weight");
    const auto bias = vector_of<double>(model, path + ".bias");
    Eigen::MatrixXd y = vera::forward(h, w0, bias, loaded.model.at(path));
    if (name != "down_proj") y = y.unaryExpr([](double v) { return gelu(v); });
    h = y;
  }
  const Eigen::MatrixXd out = h * matrix_of<double>(model, "lm_head.weight").transpose();
  const auto expected = matrix_of<double>(io, "output.f64");
  CHECK(max_abs_diff(out, expected) <= 1e-12 * scale_of(expected));
}

TEST_CASE("a saved projection is compared with the regenerated one and used", "[io][peft]") {
  const auto seed =
      vera::io::load_peft_adapter<float>(fixtures / "linear_seed", model_shapes("linear"));
  const auto saved =
      vera::io::load_peft_adapter<float>(fixtures / "linear_projection", model_shapes("linear"));
  CHECK(saved.report.projection_in_file);
  CHECK(saved.report.used_saved_projection);
  CHECK(saved.report.a_difference.elements == 160);
  CHECK(saved.report.a_difference.differing == 0);
  CHECK(saved.report.b_difference.differing == 0);
  CHECK(saved.report.a_difference.max_abs == 0.0);
  CHECK(saved.report.projection_matches_seed());
  CHECK(saved.report.warnings.empty());
  CHECK(same_bits(saved.model.shared_projection().a(), seed.model.shared_projection().a()));
  for (const auto& [path, layer] : saved.model) {
    CHECK(layer.lambda_b() == seed.model.at(path).lambda_b());
    CHECK(layer.lambda_d() == seed.model.at(path).lambda_d());
  }
}

TEST_CASE(
    "a bfloat16 adapter loads: lambdas widen exactly, the saved projection's rounding is reported",
    "[io][peft]") {
  const auto seed =
      vera::io::load_peft_adapter<float>(fixtures / "linear_seed", model_shapes("linear"));
  const auto bf16 = vera::io::load_peft_adapter<float>(fixtures / "linear_bf16_projection",
                                                       model_shapes("linear"));
  CHECK(bf16.report.used_saved_projection);
  CHECK(bf16.report.a_difference.differing > 100);  // bf16 keeps 8 of float's 24 bits
  CHECK(bf16.report.a_difference.max_abs < 0.01);
  CHECK_FALSE(bf16.report.projection_matches_seed());
  REQUIRE(bf16.report.warnings.size() == 1);
  CHECK_THAT(bf16.report.warnings[0],
             Catch::Matchers::Contains("differs from the one regenerated"));
  const auto round = [](float v) {
    return vera::io::detail::bfloat16_to_float(vera::io::detail::float_to_bfloat16(v));
  };
  CHECK(bf16.model.shared_projection().a() == seed.model.shared_projection().a().unaryExpr(round));
  for (const auto& [path, layer] : bf16.model) {
    CHECK(layer.lambda_b() == seed.model.at(path).lambda_b().unaryExpr(round));
    CHECK(layer.lambda_d() == seed.model.at(path).lambda_d().unaryExpr(round));
  }

  vera::io::load_options regenerate;
  regenerate.source = vera::io::projection_source::regenerated;
  const auto regenerated = vera::io::load_peft_adapter<float>(fixtures / "linear_bf16_projection",
                                                              model_shapes("linear"), regenerate);
  CHECK_FALSE(regenerated.report.used_saved_projection);
  CHECK(same_bits(regenerated.model.shared_projection().a(), seed.model.shared_projection().a()));
}

TEST_CASE("saving reproduces PEFT's files; loading them back gives the same adapter",
          "[io][peft]") {
  const auto loaded =
      vera::io::load_peft_adapter<float>(fixtures / "linear_seed", model_shapes("linear"));
  vera_test::scratch_dir dir;
  vera::io::save_peft_adapter(loaded.model, dir / "seed", {}, loaded.config);
  CHECK(dir.entries() == std::vector<std::string>{"seed"});

  const safetensors_file ours(dir / "seed" / "adapter_model.safetensors");
  const safetensors_file peft(fixtures / "linear_seed" / "adapter_model.safetensors");
  REQUIRE(ours.tensors().size() == peft.tensors().size());
  for (std::size_t i = 0; i < ours.tensors().size(); ++i) {
    const auto& a = ours.tensors()[i];
    const auto& b = peft.tensors()[i];
    CHECK(a.name == b.name);
    CHECK(a.shape == b.shape);
    CHECK(a.type == b.type);
    CHECK(std::memcmp(ours.bytes(a), peft.bytes(b), a.byte_size()) == 0);
  }
  CHECK(ours.metadata().at("format") == "pt");
  const auto config = vera::io::vera_config::read(dir / "seed");
  CHECK(config.to_json() == loaded.config.json);  // PEFT's config, unknown fields included

  vera::io::save_options with_projection;
  with_projection.save_projection = true;
  vera::io::save_peft_adapter(loaded.model, dir / "projection", with_projection, loaded.config);
  const safetensors_file saved(dir / "projection" / "adapter_model.safetensors");
  const safetensors_file peft_saved(fixtures / "linear_projection" / "adapter_model.safetensors");
  for (const char* key : {"base_model.vera_A", "base_model.vera_B"}) {
    CHECK(same_bits(matrix_of<float>(saved, key), matrix_of<float>(peft_saved, key)));
  }
  CHECK(vera::io::vera_config::read(dir / "projection").save_projection);

  const auto back = vera::io::load_peft_adapter<double>(dir / "projection", model_shapes("linear"));
  CHECK(back.report.projection_matches_seed());
  for (const auto& [path, layer] : back.model) {
    CHECK(layer.lambda_b() == loaded.model.at(path).lambda_b().cast<double>());
  }
}

TEST_CASE("a new adapter saves with target_modules from its paths", "[io][peft]") {
  const layer_shapes shapes{{"encoder.0.q", {6, 4}}, {"encoder.0.v", {6, 9}}};
  vera::adapter_options options;
  options.init = vera::init_kind::random;
  options.init_seed = 5;
  auto model = vera::io::model_adapter<double>::generate(42, 3, shapes, options);
  CHECK(model.shared_projection().max_out() == 9);
  vera_test::scratch_dir dir;
  vera::io::save_peft_adapter(model, dir.path());
  const auto config = vera::io::vera_config::read(dir.path());
  CHECK(config.r == 3);
  CHECK(config.projection_prng_key == 42);
  CHECK_FALSE(config.save_projection);
  CHECK(config.target_modules.names == std::vector<std::string>{"encoder.0.q", "encoder.0.v"});
  const auto back = vera::io::load_peft_adapter<double>(dir.path(), shapes);
  // Written as F32: the values round once.
  CHECK(back.model.at("encoder.0.q").lambda_d() ==
        model.at("encoder.0.q").lambda_d().cast<float>().cast<double>());
}

TEST_CASE("seed-only saves refuse projections PEFT would not regenerate", "[io][peft]") {
  const layer_shapes shapes{{"a", {8, 4}}, {"b", {4, 8}}};
  vera_test::scratch_dir dir;
  const auto philox =
      vera::io::model_adapter<float>::generate(1, 2, shapes, {}, vera::generator::philox);
  CHECK_THROWS_MATCHES(vera::io::save_peft_adapter(philox, dir / "x"), vera::value_error,
                       message_contains("not what PEFT regenerates"));
  vera::io::save_options with_projection;
  with_projection.save_projection = true;
  CHECK_NOTHROW(vera::io::save_peft_adapter(philox, dir / "philox", with_projection));

  const vera::io::model_adapter<float> oversized(vera::projection<float>({1, 2, 16, 16}), shapes);
  CHECK_THROWS_MATCHES(vera::io::save_peft_adapter(oversized, dir / "y"), vera::shape_error,
                       message_contains("PEFT sizes it from the layers"));
  CHECK_FALSE(std::filesystem::exists(dir / "y"));
  // With the projection written, PEFT's file for a model's later adapter looks like this.
  CHECK_NOTHROW(vera::io::save_peft_adapter(oversized, dir / "oversized", with_projection));
  vera::adapter_options rank_one;
  rank_one.rank = 1;
  const vera::io::model_adapter<float> low_rank(vera::projection<float>({1, 2, 8, 8}), shapes,
                                                rank_one);
  CHECK_THROWS_AS(vera::io::save_peft_adapter(low_rank, dir / "z"), vera::rank_error);
  std::filesystem::remove_all(dir / "oversized");
  CHECK(dir.entries() == std::vector<std::string>{"philox"});

  // A failure after the directory was created removes it again, with no temporary file left.
  auto bad_config = vera::io::vera_config::parse(R"({"peft_type": "VERA", "r": 2})");
  bad_config.revision = std::string("\xff\xfe");
  CHECK_THROWS_MATCHES(vera::io::save_peft_adapter(philox, dir / "w", with_projection, bad_config),
                       vera::value_error, message_contains("not valid UTF-8"));
  CHECK(dir.entries() == std::vector<std::string>{"philox"});
  vera_test::write_bytes(dir / "file", {1});
  CHECK_THROWS_MATCHES(vera::io::save_peft_adapter(philox, dir / "file", with_projection),
                       vera::io_error, message_contains("not a directory"));
}

TEMPLATE_TEST_CASE("LoRA export is exact: lora_B lora_A equals delta_weight", "[io][peft][lora]",
                   float, double) {
  for (const std::string kind : {"linear", "conv1d"}) {
    INFO(kind);
    const auto loaded =
        vera::io::load_peft_adapter<TestType>(fixtures / (kind + "_seed"), model_shapes(kind));
    for (const auto& [path, layer] : loaded.model) {
      const auto lora = vera::io::to_lora(layer);
      CHECK(lora.a.rows() == 8);
      CHECK(lora.a.cols() == layer.in_features());
      CHECK(lora.b.rows() == layer.out_features());
      // The same products as the CPU evaluator of delta_weight, so equal to the last bit.
      using matrix = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
      const matrix product = layer.options().fan_in_fan_out
                                 ? matrix(lora.a.transpose() * lora.b.transpose())
                                 : matrix(lora.b * lora.a);
      const matrix delta = vera::delta_weight(layer);
      CHECK(max_abs_diff(product, delta) == 0.0);
    }

    vera_test::scratch_dir dir;
    vera::io::export_lora(loaded.model, dir.path(), loaded.config);
    const auto config =
        nlohmann::json::parse(vera::io::read_text_file(dir / "adapter_config.json", 1 << 20));
    CHECK(config.at("peft_type") == "LORA");
    CHECK(config.at("r") == 8);
    CHECK(config.at("lora_alpha") == 8);
    CHECK(config.at("fan_in_fan_out") == (kind == "conv1d"));
    const safetensors_file weights(dir / "adapter_model.safetensors");
    const safetensors_file io(fixtures / (kind + "_io.safetensors"));
    CHECK(weights.tensors().size() == 2 * loaded.model.size());
    for (const auto& [path, layer] : loaded.model) {
      const auto a = matrix_of<double>(weights, "base_model.model." + path + ".lora_A.weight");
      const auto b = matrix_of<double>(weights, "base_model.model." + path + ".lora_B.weight");
      Eigen::MatrixXd product = b * a;
      if (kind == "conv1d") product.transposeInPlace();
      const auto peft_delta = matrix_of<double>(io, path + ".delta_weight");
      CHECK(max_abs_diff(product, peft_delta) <= 1e-5 * scale_of(peft_delta));
    }
  }
}

TEST_CASE("adapter files that do not match the config or the base model are refused",
          "[io][peft][hostile]") {
  const auto shapes = model_shapes("linear");
  const auto load = [&](const std::filesystem::path& dir) {
    return vera::io::load_peft_adapter<float>(dir, shapes);
  };
  const std::vector<float> twenty(20, 1.0f),
      nan_vector{1.0f, std::nanf(""), 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};

  const edited_adapter missing_d("linear_seed",
                                 [](auto& w, const auto& f) { copy_tensors(w, f, {q_d}); });
  CHECK_THROWS_MATCHES(load(missing_d.path()), format_error,
                       message_contains("layer 'model.layers.0.q_proj' has no '" + q_d + "'"));

  const edited_adapter long_b("linear_seed", [&](auto& w, const auto& f) {
    copy_tensors(w, f, {q_b});
    w.add(q_b, vera::io::dtype::f32, {20}, twenty.data());
  });
  CHECK_THROWS_MATCHES(
      load(long_b.path()), format_error,
      message_contains(
          "has shape [20], expected [12] (out_features of layer 'model.layers.0.q_proj')"));

  const edited_adapter long_d("linear_seed", [&](auto& w, const auto& f) {
    copy_tensors(w, f, {q_d});
    w.add(q_d, vera::io::dtype::f32, {9}, twenty.data());
  });
  CHECK_THROWS_MATCHES(load(long_d.path()), format_error,
                       message_contains("expected [8] (r = 8 in adapter_config.json)"));

  const edited_adapter nan_d("linear_seed", [&](auto& w, const auto& f) {
    copy_tensors(w, f, {q_d});
    w.add(q_d, vera::io::dtype::f32, {8}, nan_vector.data());
  });
  CHECK_THROWS_MATCHES(load(nan_d.path()), format_error,
                       message_contains("'" + q_d + "' element 1 is NaN"));

  const edited_adapter int_d("linear_seed", [&](auto& w, const auto& f) {
    copy_tensors(w, f, {q_d});
    w.add_bytes(q_d, vera::io::dtype::i64, {8}, f.bytes(f.at(q_d)) /* any 64 bytes */);
  });
  CHECK_THROWS_MATCHES(load(int_d.path()), format_error, message_contains("has dtype I64"));

  const edited_adapter extra("linear_seed", [&](auto& w, const auto& f) {
    copy_tensors(w, f);
    w.add("base_model.model.classifier.weight", vera::io::dtype::f32, {2, 10}, twenty.data());
  });
  CHECK_THROWS_MATCHES(
      load(extra.path()), format_error,
      message_contains(
          "tensor 'base_model.model.classifier.weight' is not part of a VeRA adapter"));
  vera::io::load_options lenient;
  lenient.allow_extra_tensors = true;
  const auto ignoring = vera::io::load_peft_adapter<float>(extra.path(), shapes, lenient);
  CHECK(ignoring.report.ignored_tensors ==
        std::vector<std::string>{"base_model.model.classifier.weight"});

  const edited_adapter unknown_layer("linear_seed", [&](auto& w, const auto& f) {
    copy_tensors(w, f);
    w.add("base_model.model.other.vera_lambda_b", vera::io::dtype::f32, {4}, twenty.data());
    w.add("base_model.model.other.vera_lambda_d", vera::io::dtype::f32, {8}, twenty.data());
  });
  CHECK_THROWS_MATCHES(
      load(unknown_layer.path()), format_error,
      message_contains(
          "layer 'other' is adapted here but the base layer shapes have no such layer"));

  const edited_adapter no_layers("linear_seed", [](auto&, const auto&) {});
  CHECK_THROWS_MATCHES(load(no_layers.path()), format_error,
                       message_contains("holds no VeRA layer"));

  const safetensors_file with_projection(fixtures / "linear_projection" /
                                         "adapter_model.safetensors");
  const edited_adapter only_a("linear_projection", [](auto& w, const auto& f) {
    copy_tensors(w, f, {"base_model.vera_B"});
  });
  CHECK_THROWS_MATCHES(load(only_a.path()), format_error,
                       message_contains("holds 'base_model.vera_A' but not 'base_model.vera_B'"));
  const edited_adapter no_projection("linear_projection", [](auto& w, const auto& f) {
    copy_tensors(w, f, {"base_model.vera_A", "base_model.vera_B"});
  });
  CHECK_THROWS_MATCHES(load(no_projection.path()), format_error,
                       message_contains("save_projection = true but the file holds no"));
  // A pair larger than the layers need loads (PEFT saves the model's pair with every adapter);
  // a smaller one, or one of another rank, does not.
  const edited_adapter narrow_a("linear_projection", [&](auto& w, const auto& f) {
    copy_tensors(w, f, {"base_model.vera_A"});
    std::vector<float> a(8 * 18, 0.5f);
    w.add("base_model.vera_A", vera::io::dtype::f32, {8, 18}, a.data());
  });
  CHECK_THROWS_MATCHES(
      load(narrow_a.path()), format_error,
      message_contains("has shape [8, 18], expected [8, 20] (r = 8 in adapter_config.json x the "
                       "largest in_features of the adapted layers, or larger"));
  const edited_adapter low_rank_b("linear_projection", [&](auto& w, const auto& f) {
    copy_tensors(w, f, {"base_model.vera_B"});
    std::vector<float> b(24 * 4, 0.5f);
    w.add("base_model.vera_B", vera::io::dtype::f32, {24, 4}, b.data());
  });
  CHECK_THROWS_MATCHES(load(low_rank_b.path()), format_error,
                       message_contains("'base_model.vera_B' has shape [24, 4], expected [20, 8] "
                                        "(the largest out_features of the adapted layers x r = 8"));

  // A seed-only config with A and B in the file: PEFT ignores them and regenerates; so does vera.
  const auto seed_config =
      vera::io::read_text_file(fixtures / "linear_seed" / "adapter_config.json", 1 << 20);
  const edited_adapter unexpected_projection(
      "linear_projection", [](auto& w, const auto& f) { copy_tensors(w, f); }, seed_config);
  const auto regenerated = load(unexpected_projection.path());
  CHECK_FALSE(regenerated.report.used_saved_projection);
  REQUIRE(regenerated.report.warnings.size() == 1);
  CHECK_THAT(regenerated.report.warnings[0], Catch::Matchers::Contains("PEFT ignores them"));

  const edited_adapter lora_config(
      "linear_seed", [](auto& w, const auto& f) { copy_tensors(w, f); },
      R"({"peft_type": "LORA", "r": 8})");
  CHECK_THROWS_MATCHES(load(lora_config.path()), format_error, message_contains("expected 'VERA'"));

  vera_test::scratch_dir pickle;
  vera::io::vera_config::read(fixtures / "linear_seed").write(pickle / "adapter_config.json");
  vera_test::write_bytes(pickle / "adapter_model.bin", {0x80, 0x02});
  CHECK_THROWS_MATCHES(load(pickle.path()), format_error,
                       message_contains("adapter_model.bin (a pickle)"));
  CHECK_THROWS_AS(load(pickle / "missing"), vera::io_error);

  const layer_shapes narrow{{"model.layers.0.q_proj", {16, 12}},
                            {"model.layers.0.up_proj", {12, 20}},
                            {"model.layers.0.down_proj", {20, 9}}};
  CHECK_THROWS_MATCHES(vera::io::load_peft_adapter<float>(fixtures / "linear_seed", narrow),
                       format_error, message_contains("has shape [8], expected [9]"));
}

TEST_CASE("layer shapes come from base weights in either layout", "[io][peft]") {
  const std::vector<float> none;
  vera::io::safetensors_writer writer;
  writer.add("empty.weight", vera::io::dtype::f32, {0, std::uint64_t{1} << 60}, none.data());
  writer.add("vector.weight", vera::io::dtype::f32, {1}, std::vector<float>{1.0f}.data());
  const auto image = writer.serialize();
  const vera::io::safetensors_view odd(image.data(), image.size());
  CHECK_THROWS_MATCHES(vera::io::layer_shapes_from_weights(odd, {"empty"}, false), format_error,
                       message_contains("expected a non-empty 2-D weight"));
  CHECK_THROWS_MATCHES(vera::io::layer_shapes_from_weights(odd, {"vector"}, false), format_error,
                       message_contains("has shape [1], expected a non-empty 2-D weight"));

  const safetensors_file model(fixtures / "conv1d_model.safetensors");
  const auto shapes =
      vera::io::layer_shapes_from_weights(model, {"transformer.h.0.attn.c_attn"}, true);
  CHECK(shapes.at("transformer.h.0.attn.c_attn") == vera::io::layer_shape{12, 20});
  CHECK_THROWS_MATCHES(vera::io::layer_shapes_from_weights(model, {"nope"}, true), format_error,
                       message_contains("no tensor 'nope.weight' for adapted layer 'nope'"));
  CHECK_THROWS_MATCHES(
      vera::io::layer_shapes_from_weights(model, {"transformer.h.0.attn.c_attn.bias"}, false),
      format_error, message_contains("no tensor"));
  const safetensors_file linear(fixtures / "linear_model.safetensors");
  CHECK_THROWS_MATCHES(
      vera::io::layer_shapes_from_weights(linear, {"model.layers.0.q_proj.bias"}, false),
      format_error, message_contains("no tensor 'model.layers.0.q_proj.bias.weight'"));
}

TEMPLATE_TEST_CASE("a merged model file holds PEFT's merged weights and copies everything else",
                   "[io][peft][merge]", float, double) {
  for (const std::string kind : {"linear", "conv1d"}) {
    INFO(kind);
    const auto loaded =
        vera::io::load_peft_adapter<TestType>(fixtures / (kind + "_seed"), model_shapes(kind));
    const safetensors_file base(fixtures / (kind + "_model.safetensors"));
    const safetensors_file io(fixtures / (kind + "_io.safetensors"));
    vera::io::safetensors_writer writer;
    vera::io::add_merged_model(writer, base, loaded.model);
    const auto image = writer.serialize();
    const vera::io::safetensors_view merged(image.data(), image.size());
    CHECK(merged.metadata() == base.metadata());
    REQUIRE(merged.tensors().size() == base.tensors().size());
    for (const auto& t : base.tensors()) {
      INFO(t.name);
      const auto& out = merged.at(t.name);
      CHECK(out.type == t.type);
      CHECK(out.shape == t.shape);
      const std::string path = t.name.substr(0, t.name.size() - std::string(".weight").size());
      if (io.contains(path + ".merged_weight")) {
        const auto peft = matrix_of<float>(io, path + ".merged_weight");
        CHECK(max_abs_diff(matrix_of<float>(merged, t.name), peft) <= 1e-6 * scale_of(peft));
      } else {
        CHECK(std::memcmp(merged.bytes(out), base.bytes(t), t.byte_size()) == 0);
      }
    }
  }
}

TEST_CASE("a merge that overflows writes nothing; a base without the layer is refused",
          "[io][peft][merge]") {
  auto loaded =
      vera::io::load_peft_adapter<float>(fixtures / "linear_seed", model_shapes("linear"));
  const safetensors_file base(fixtures / "linear_model.safetensors");
  auto& layer = loaded.model.at("model.layers.0.up_proj");
  layer.lambda_b().setConstant(3e38f);
  vera_test::scratch_dir dir;
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, base, loaded.model);
  CHECK_THROWS_MATCHES(writer.write(dir / "merged.safetensors"), vera::value_error,
                       message_contains("merging into 'model.layers.0.up_proj.weight'"));
  CHECK(dir.entries().empty());

  const safetensors_file other(fixtures / "conv1d_model.safetensors");
  vera::io::safetensors_writer unused;
  CHECK_THROWS_MATCHES(vera::io::add_merged_model(unused, other, loaded.model), format_error,
                       message_contains("no tensor named 'model.layers.0.down_proj.weight'"));
  const layer_shapes transposed{{"model.layers.0.q_proj", {12, 16}}};
  const vera::io::model_adapter<float> wrong(vera::projection<float>({1, 8, 12, 16}), transposed);
  CHECK_THROWS_MATCHES(vera::io::add_merged_model(unused, base, wrong), format_error,
                       message_contains("has shape [12, 16], expected [16, 12]"));
}

TEST_CASE("merging into bfloat16 weights matches PEFT's merge on a bfloat16 model",
          "[io][peft][merge]") {
  const auto loaded =
      vera::io::load_peft_adapter<float>(fixtures / "linear_seed", model_shapes("linear"));
  const safetensors_file base(fixtures / "linear_bf16_model.safetensors");
  const safetensors_file io(fixtures / "linear_io.safetensors");

  // PEFT rounds the projection to bfloat16 on such a model and keeps the vectors.
  const auto rounded = vera::io::round_projection(loaded.model, vera::io::dtype::bf16);
  const auto to_bf16 = [](float v) {
    return vera::io::detail::bfloat16_to_float(vera::io::detail::float_to_bfloat16(v));
  };
  CHECK(rounded.shared_projection().a() == loaded.model.shared_projection().a().unaryExpr(to_bf16));
  CHECK(rounded.shared_projection().b() == loaded.model.shared_projection().b().unaryExpr(to_bf16));
  for (const auto& [path, layer] : rounded) {
    CHECK(layer.lambda_d() == loaded.model.at(path).lambda_d());
  }

  const auto differing = [&](const vera::io::merge_options& options) {
    vera::io::safetensors_writer writer;
    vera::io::add_merged_model(writer, base, loaded.model, options);
    const auto image = writer.serialize();
    const vera::io::safetensors_view merged(image.data(), image.size());
    Eigen::Index count = 0;
    for (const auto& [path, layer] : loaded.model) {
      CHECK(merged.at(path + ".weight").type == vera::io::dtype::bf16);
      const auto ours = matrix_of<float>(merged, path + ".weight");
      const auto peft = matrix_of<float>(io, path + ".merged_weight_bf16");
      // At most one bfloat16 step apart (8 significant bits).
      CHECK(max_abs_diff(ours, peft) <= std::ldexp(1.0, -7) * scale_of(peft));
      count += (ours.array() != peft.array()).count();
    }
    return count;
  };
  CHECK(differing({}) == 0);  // of 592 elements: bit for bit
  vera::io::merge_options full;
  full.match_peft_precision = false;
  CHECK(differing(full) > 10);
}

TEST_CASE("model adapters name the layer in their errors", "[io][peft]") {
  const vera::projection<float> shared({3, 4, 10, 10});
  CHECK_THROWS_MATCHES(vera::io::model_adapter<float>(shared, {{"", {4, 4}}}), vera::value_error,
                       message_contains("empty module path"));
  CHECK_THROWS_MATCHES(vera::io::model_adapter<float>(shared, {{"wide", {12, 4}}}),
                       vera::shape_error, message_contains("layer 'wide': in_features"));
  vera::adapter_options too_high;
  too_high.rank = 5;
  CHECK_THROWS_MATCHES(vera::io::model_adapter<float>(shared, {{"deep", {4, 4}}}, too_high),
                       vera::rank_error, message_contains("layer 'deep': rank"));
  const vera::io::model_adapter<float> model(shared, {{"a", {4, 6}}, {"b", {10, 2}}});
  CHECK(model.size() == 2);
  CHECK(model.trainable_parameters() == 6 + 4 + 2 + 4);
  CHECK(model.shapes().at("b") == vera::io::layer_shape{10, 2});
  CHECK(vera::io::max_extents(model.shapes()) == vera::io::layer_shape{10, 6});
  CHECK_THROWS_MATCHES(model.at("c"), vera::value_error, message_contains("no adapted layer 'c'"));

  vera_test::scratch_dir dir;
  const vera::io::model_adapter<float> empty(shared, {});
  CHECK_THROWS_AS(vera::io::export_lora(empty, dir / "lora"), vera::value_error);
  CHECK_THROWS_AS(vera::io::save_peft_adapter(empty, dir / "vera"), vera::value_error);
  CHECK(dir.entries().empty());
}
