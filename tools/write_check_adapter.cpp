// SPDX-License-Identifier: Apache-2.0
// Writes an adapter saved by vera, plus vera's outputs for it, for make_peft_fixtures.py
// --check-vera.
//
// usage: vera_write_check_adapter FIXTURES OUTDIR [linear|conv1d] [--projection]
//
// Loads the PEFT fixture adapter FIXTURES/<kind>_seed, changes every lambda (so that PEFT cannot
// pass by reading its own numbers back), saves it to OUTDIR with vera (seed only unless
// --projection), and writes OUTDIR/vera_outputs.safetensors: each adapted layer's output for the
// fixture's recorded layer inputs, and the whole tiny model's output for the fixture input.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <vera/io.hpp>
#include <vera/vera.hpp>

namespace {

namespace fs = std::filesystem;
using matrix = Eigen::MatrixXf;

matrix matrix_of(const vera::io::safetensors_view& file, const std::string& name) {
  const auto& info = file.at(name);
  const auto values = file.values<float>(info);
  return Eigen::Map<const vera::row_matrix<float>>(values.data(),
                                                   static_cast<Eigen::Index>(info.shape[0]),
                                                   static_cast<Eigen::Index>(info.shape[1]));
}

Eigen::VectorXf vector_of(const vera::io::safetensors_view& file, const std::string& name) {
  const auto values = file.values<float>(name);
  return Eigen::Map<const Eigen::VectorXf>(values.data(), static_cast<Eigen::Index>(values.size()));
}

// The same erf-based GELU as torch.nn.functional.gelu, evaluated in double.
matrix gelu(const matrix& x) {
  return x.unaryExpr([](float v) {
    return static_cast<float>(0.5 * v * (1.0 + std::erf(static_cast<double>(v) / std::sqrt(2.0))));
  });
}

void add_matrix(vera::io::safetensors_writer& writer, const std::string& name, const matrix& m) {
  const vera::row_matrix<float> rows = m;
  writer.add(name, vera::io::dtype::f32,
             {static_cast<std::uint64_t>(rows.rows()), static_cast<std::uint64_t>(rows.cols())},
             rows.data());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s FIXTURES OUTDIR [linear|conv1d] [--projection]\n", argv[0]);
    return 2;
  }
  const fs::path fixtures = argv[1];
  const fs::path out = argv[2];
  std::string kind = "linear";
  bool save_projection = false;
  for (int i = 3; i < argc; ++i) {
    if (std::strcmp(argv[i], "--projection") == 0) {
      save_projection = true;
    } else {
      kind = argv[i];
    }
  }
  try {
    const vera::io::safetensors_file model(fixtures / (kind + "_model.safetensors"));
    const vera::io::safetensors_file io(fixtures / (kind + "_io.safetensors"));
    const vera::io::safetensors_file seed_weights(fixtures / (kind + "_seed") /
                                                  "adapter_model.safetensors");
    const auto config = vera::io::vera_config::read(fixtures / (kind + "_seed"));
    const auto shapes = vera::io::layer_shapes_from_weights(
        model, vera::io::peft_layer_paths(seed_weights), config.fan_in_fan_out);
    auto loaded = vera::io::load_peft_adapter<float>(config, seed_weights, shapes);

    int layer_index = 0;
    for (auto& [path, layer] : loaded.model) {
      ++layer_index;
      const Eigen::VectorXf b =
          layer.lambda_b().array() * 0.75f + 0.05f * static_cast<float>(layer_index);
      const Eigen::VectorXf d = layer.lambda_d().reverse().array() - 0.3f;
      layer.set_lambdas(b, d);
    }
    vera::io::save_options options;
    options.save_projection = save_projection;
    vera::io::save_peft_adapter(loaded.model, out, options, loaded.config);

    vera::io::safetensors_writer outputs;
    for (const auto& [path, layer] : loaded.model) {
      const matrix y =
          vera::forward(matrix_of(io, path + ".input"), matrix_of(model, path + ".weight"),
                        vector_of(model, path + ".bias"), layer);
      add_matrix(outputs, path + ".output", y);
    }
    // The fixture models' forward, with the adapted layers run by vera.
    const auto layer = [&](const std::string& path, const matrix& x) -> matrix {
      return vera::forward(x, matrix_of(model, path + ".weight"), vector_of(model, path + ".bias"),
                           loaded.model.at(path));
    };
    const matrix x = matrix_of(io, "input");
    matrix y;
    if (kind == "linear") {
      const matrix h =
          gelu(layer("model.layers.0.up_proj", gelu(layer("model.layers.0.q_proj", x))));
      y = layer("model.layers.0.down_proj", h) * matrix_of(model, "lm_head.weight").transpose();
    } else {
      y = layer("transformer.h.0.attn.c_proj", gelu(layer("transformer.h.0.attn.c_attn", x)));
    }
    add_matrix(outputs, "output", y);
    outputs.write(out / "vera_outputs.safetensors");
    std::printf("wrote %s (%s, %s) and vera_outputs.safetensors\n", out.string().c_str(),
                kind.c_str(), save_projection ? "with projection" : "seed only");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
