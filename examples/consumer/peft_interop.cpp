// SPDX-License-Identifier: Apache-2.0
// The docs/peft_interop.md example: a PEFT VeRA adapter on its base model, one layer run, merged,
// re-saved and exported as LoRA. Usage: peft_interop ADAPTER_DIR BASE.safetensors OUT_DIR
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <vector>

#include <vera/io.hpp>
#include <vera/vera.hpp>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s ADAPTER_DIR BASE.safetensors OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path adapter_dir = argv[1], out = argv[3];
  try {
    // Each file is opened (mapped) once; shapes, loader and merge all read from these.
    const vera::io::safetensors_file base(argv[2]);
    const vera::io::safetensors_file weights(adapter_dir / vera::io::adapter_weights_file);
    const auto config = vera::io::vera_config::read(adapter_dir);
    const auto shapes = vera::io::layer_shapes_from_weights(
        base, vera::io::peft_layer_paths(weights), config.fan_in_fan_out);
    const auto loaded = vera::io::load_peft_adapter<float>(config, weights, shapes);

    // One adapted layer as PEFT computes it. Layers are named by module path, without PEFT's
    // "base_model.model." key prefix. read_matrix keeps PyTorch's row-major layout (out x in).
    const auto& [path, layer] = *loaded.model.begin();
    const Eigen::MatrixXf w0 = vera::io::read_matrix<float>(base, path + ".weight");
    Eigen::VectorXf bias = vera::io::read_vector<float>(base, path + ".bias");
    if (const auto* trained = loaded.find_trained(path + ".bias")) {  // bias = "vera_only"/"all"
      const std::vector<float> values = trained->values<float>();
      bias = Eigen::Map<const Eigen::VectorXf>(values.data(), static_cast<Eigen::Index>(values.size()));
    }
    const Eigen::MatrixXf x = Eigen::MatrixXf::Random(4, layer.in_features());
    const Eigen::MatrixXf y = vera::forward(x, w0, bias, layer);

    // The merged model: W0 + ΔW in every adapted layer, modules_to_save copies (the classifier)
    // and trained biases in place of the base model's. Then the adapter itself, written back
    // (as its file had it: with or without A and B) and as an exact LoRA adapter.
    std::filesystem::create_directories(out);
    vera::io::safetensors_writer merged;
    vera::io::add_merged_model(merged, base, loaded);
    merged.write(out / "merged.safetensors");
    vera::io::save_options as_loaded;
    as_loaded.save_projection = loaded.report.projection_in_file;
    vera::io::save_peft_adapter(loaded, out / "adapter_copy", as_loaded);
    vera::io::export_lora(loaded, out / "adapter_as_lora");

    // The merged layer alone computes what the adapted layer did.
    const vera::io::safetensors_file merged_file(out / "merged.safetensors");
    const Eigen::MatrixXf w = vera::io::read_matrix<float>(merged_file, path + ".weight");
    const Eigen::VectorXf merged_bias = vera::io::read_vector<float>(merged_file, path + ".bias");
    const Eigen::MatrixXf y_merged =
        (layer.options().fan_in_fan_out ? Eigen::MatrixXf(x * w) : Eigen::MatrixXf(x * w.transpose()))
            .rowwise() + merged_bias.transpose();
    const float difference = (y - y_merged).cwiseAbs().maxCoeff();
    const float scale = std::max(1.0f, y.cwiseAbs().maxCoeff());
    std::printf("%zu layers, %zu tensors kept whole; layer %s: max |adapted - merged| = %g\n",
                loaded.model.size(), loaded.trained.size(), path.c_str(), difference);
    return difference <= 1e-5f * scale ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
