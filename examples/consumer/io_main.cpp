// SPDX-License-Identifier: Apache-2.0
// Downstream program using the installed vera::io component: saves a PEFT adapter and loads it back.
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include <vera/io.hpp>

int main() {
  const vera::io::layer_shapes shapes = {{"model.q_proj", {24, 24}}, {"model.up_proj", {24, 40}}};
  auto model = vera::io::model_adapter<float>::generate(/*seed=*/5, /*rank=*/8, shapes);
  for (auto& [path, layer] : model) {
    layer.lambda_b().setLinSpaced(-0.5f, 0.5f);
    layer.lambda_d().setConstant(0.25f);
  }
  const auto dir = std::filesystem::temp_directory_path() /
                   ("vera_consumer_io_" + std::to_string(std::random_device{}()));
  vera::io::save_peft_adapter(model, dir);
  const auto loaded = vera::io::load_peft_adapter<float>(dir, shapes);
  bool same = loaded.report.projection_matches_seed();
  for (const auto& [path, layer] : model) {
    const auto& back = loaded.model.at(path);
    same = same && back.lambda_b() == layer.lambda_b() && back.lambda_d() == layer.lambda_d();
  }
  std::filesystem::remove_all(dir);
  std::printf("vera::io consumer: saved and reloaded %zu layers: %s\n", model.size(),
              same ? "identical" : "DIFFERENT");
  return same ? 0 : 1;
}
