// SPDX-License-Identifier: Apache-2.0
// The `vera` command-line tool: inspect PEFT VeRA adapters, write projections, merge, export to
// LoRA.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <vera/io.hpp>
#include <vera/vera.hpp>

namespace {

namespace fs = std::filesystem;
using vera::io::dtype;

constexpr int exit_ok = 0;
constexpr int exit_failure = 1;
constexpr int exit_usage = 2;

// A command-line mistake: reported with a pointer to --help, exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* const main_help = R"(usage: vera <command> [options]

Work with HuggingFace PEFT VeRA adapters (a directory with adapter_config.json and
adapter_model.safetensors).

commands:
  inspect      show an adapter directory or a safetensors file
  projection   write the shared projection A, B generated from a seed
  merge        merge an adapter into a base model's weights (safe merge)
  export-lora  write an exact PEFT LoRA adapter equivalent to a VeRA adapter

Run 'vera <command> --help' for a command's options. 'vera --version' prints the version.
Exit status: 0 success, 1 failure (bad file, I/O error), 2 usage error.
)";

const char* const inspect_help = R"(usage: vera inspect PATH [--base MODEL.safetensors] [--conv1d NAME ...] [--linear NAME ...]

PATH is a PEFT adapter directory or a .safetensors file.
For a directory: the config, the layers, the tensors kept whole (modules_to_save copies, trained
biases) and the model tensors they replace, and whether the saved projection (if any) equals the
one regenerated from projection_prng_key. With --base, the base model's weights give every
layer's in/out features and the adapter is fully loaded and checked.
Each layer's weight layout (out x in for nn.Linear, in x out for transformers' Conv1D) is read
from the base weight's shape, whatever the config's fan_in_fan_out says (PEFT decides it per
module). A square weight in a model that mixes both kinds is refused unless named with
--conv1d NAME or --linear NAME (module paths; each may be given more than once).
For a file: every tensor (dtype, shape, bytes) and the metadata.
)";

const char* const projection_help =
    R"(usage: vera projection --seed S --r R --max-in I --max-out O -o FILE.safetensors
                       [--generator peft|philox] [--rounding fused|separate] [--dtype F32|F64]

Writes vera_A (R x I) and vera_B (O x R) as PEFT would generate them from projection_prng_key S
(generator peft, the default; rounding separate reproduces torch's non-FMA CPU kernel), or with
vera's counter-based generator (philox). The file's metadata records the parameters.
)";

const char* const merge_help =
    R"(usage: vera merge --base MODEL.safetensors --adapter DIR [--adapter DIR2 ...] -o OUT.safetensors
                  [--rounding fused|separate] [--adapter-precision peft|full]
                  [--conv1d NAME ...] [--linear NAME ...]
       vera merge --base MODEL.safetensors.index.json --adapter DIR -o OUTDIR

Writes a copy of MODEL in which every adapted layer's '<path>.weight' is W0 + Λb B Λd A, computed
in float32 (float64 for F64 weights) and stored in the weight's own dtype. Tensors the adapter
carries whole replace the model's: modules_to_save copies (e.g. 'classifier.weight' of a
sequence-classification adapter) and biases trained under bias = "vera_only" or "all" (stored in
the model tensor's dtype). Every other tensor and the metadata are copied unchanged. Into float16/bfloat16 weights it merges with
PEFT's operations and order, so that the result has PEFT's bits: a seed-only adapter's A and B
rounded to that dtype, a saved projection as stored (--adapter-precision full uses vera's float32
evaluator and the unrounded projection instead).
Like PEFT's safe_merge, a merged weight that is not finite is an error; OUT is written
atomically, so a failure leaves no partial file. Progress goes to stderr for large models.

Several --adapter options merge several adapters of one model, in the order given, as PEFT's
merge_and_unload does with all of them active: the first one's projection is shared, and the
others must agree with it as PEFT requires (projection_prng_key, save_projection, r, layers that
fit the projection).

A sharded model is named by its index (*.index.json): every shard is merged into OUTDIR under its
own name, with a copy of the index. OUTDIR must not exist or be empty; it appears only once every
shard is complete.
Each layer's weight layout (out x in for nn.Linear, in x out for transformers' Conv1D) is read
from the base weight's shape, whatever the config's fan_in_fan_out says (PEFT decides it per
module). A square weight in a model that mixes both kinds is refused unless named with
--conv1d NAME or --linear NAME (module paths; each may be given more than once).
)";

const char* const export_help =
    R"(usage: vera export-lora DIR -o OUTDIR (--base MODEL.safetensors | --shapes SHAPES.json)
                        [--dtype F32|F64|BF16|F16] [--conv1d NAME ...] [--linear NAME ...]

Writes a PEFT LoRA adapter with lora_A = A[:r, :in], lora_B = Λb B Λd and lora_alpha = r, so
that any LoRA runtime computes exactly the VeRA update. Each layer's in_features come from the
base model's '<path>.weight' (--base) or from a JSON object {"<path>": [in, out], ...} (--shapes).
modules_to_save copies and trained biases are copied unchanged, with the config's modules_to_save
and bias ("vera_only" becomes LoRA's "lora_only").
Each layer's weight layout (out x in for nn.Linear, in x out for transformers' Conv1D) is read
from the base weight's shape, whatever the config's fan_in_fan_out says (PEFT decides it per
module). A square weight in a model that mixes both kinds is refused unless named with
--conv1d NAME or --linear NAME (module paths; each may be given more than once).
)";

// Parsed command line of one command: positional arguments and --name value options.
struct arguments {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  std::map<std::string, std::vector<std::string>> repeated;  // options that may be given again
  bool help = false;

  // Every value of a repeatable option, in command-line order.
  std::vector<std::string> all(const std::string& name) const {
    const auto it = repeated.find(name);
    return it == repeated.end() ? std::vector<std::string>{} : it->second;
  }

  std::optional<std::string> get(const std::string& name) const {
    const auto it = options.find(name);
    if (it == options.end()) return std::nullopt;
    return it->second;
  }
  std::string required(const std::string& name) const {
    const auto value = get(name);
    if (!value) throw usage_error("missing required option --" + name);
    return *value;
  }
};

arguments parse_arguments(const std::vector<std::string>& args,
                          const std::set<std::string>& allowed,
                          const std::set<std::string>& repeatable = {}) {
  arguments out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      out.help = true;
    } else if (arg == "-o" || (arg.size() > 2 && arg.compare(0, 2, "--") == 0)) {
      std::string name = arg == "-o" ? "output" : arg.substr(2);
      std::optional<std::string> value;
      if (const auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      if (allowed.count(name) == 0) throw usage_error("unknown option '" + arg + "'");
      if (!value) {
        if (i + 1 >= args.size()) throw usage_error("option '" + arg + "' needs a value");
        value = args[++i];
      }
      out.repeated[name].push_back(*value);
      if (!out.options.emplace(name, *value).second && repeatable.count(name) == 0)
        throw usage_error("option '" + arg + "' given twice");
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw usage_error("unknown option '" + arg + "'");
    } else {
      out.positional.push_back(arg);
    }
  }
  return out;
}

std::uint64_t parse_unsigned(const std::string& name, const std::string& text) {
  std::size_t used = 0;
  unsigned long long value = 0;
  try {
    value = std::stoull(text, &used, 0);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || text[0] == '-') {
    throw usage_error("--" + name + " expects a non-negative integer, got '" + text + "'");
  }
  return value;
}

vera::index parse_extent(const std::string& name, const std::string& text) {
  const auto value = parse_unsigned(name, text);
  if (value == 0 || value > (std::uint64_t{1} << 40)) {
    throw usage_error("--" + name + " expects a positive integer, got '" + text + "'");
  }
  return static_cast<vera::index>(value);
}

// Layouts named with --conv1d NAME / --linear NAME, each repeatable.
vera::io::layer_layouts parse_layouts(const arguments& args) {
  vera::io::layer_layouts layouts;
  for (const auto& [option, conv1d] : {std::pair<const char*, bool>{"conv1d", true}, {"linear", false}}) {
    for (const auto& name : args.all(option)) {
      const auto [it, fresh] = layouts.emplace(name, conv1d);
      if (!fresh) {
        throw usage_error("layer '" + name + "' given " +
                          (it->second == conv1d ? "twice to --" + std::string(option)
                                                : std::string("to both --conv1d and --linear")));
      }
    }
  }
  return layouts;
}

vera::peft_rounding parse_rounding(const arguments& args) {
  const auto value = args.get("rounding").value_or("fused");
  if (value == "fused") return vera::peft_rounding::fused;
  if (value == "separate") return vera::peft_rounding::separate;
  throw usage_error("--rounding expects 'fused' or 'separate', got '" + value + "'");
}

dtype parse_dtype_option(const arguments& args, std::initializer_list<dtype> accepted) {
  const auto value = args.get("dtype").value_or("F32");
  const auto parsed = vera::io::parse_dtype(value);
  for (const dtype type : accepted) {
    if (parsed && *parsed == type) return type;
  }
  std::string names;
  for (const dtype type : accepted)
    names += std::string(names.empty() ? "" : ", ") + vera::io::dtype_name(type);
  throw usage_error("--dtype expects one of " + names + ", got '" + value + "'");
}

std::string describe(const vera::io::tensor_info& t) {
  return std::string(vera::io::dtype_name(t.type)) + " " + vera::io::shape_string(t.shape);
}

std::string human_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return text;
}

// ---- inspect ---------------------------------------------------------------------------------

void inspect_file(const fs::path& path) {
  const vera::io::safetensors_file file(path);
  std::cout << path.string() << ": " << file.tensors().size() << " tensors, "
            << human_bytes(file.data_size()) << " of data, header " << file.header_size()
            << " bytes\n";
  for (const auto& [key, value] : file.metadata())
    std::cout << "  metadata " << key << " = " << value << "\n";
  for (const auto& t : file.tensors()) {
    std::cout << "  " << t.name << "  " << describe(t) << "  " << human_bytes(t.byte_size())
              << "\n";
  }
}

void print_difference(const char* name, const vera::io::matrix_difference& diff) {
  std::cout << "    " << name << ": ";
  if (diff.differing == 0) {
    std::cout << "identical to the regenerated matrix (" << diff.elements << " elements)\n";
  } else {
    std::cout << diff.differing << " of " << diff.elements
              << " elements differ from the regenerated matrix, max |diff| " << diff.max_abs
              << "\n";
  }
}

void print_config(const vera::io::vera_config& config) {
  std::cout << "  peft_type VERA, r " << config.r << ", projection_prng_key "
            << config.projection_prng_key << ", save_projection "
            << (config.save_projection ? "true" : "false") << "\n";
  std::cout << "  d_initial " << config.d_initial << ", vera_dropout " << config.vera_dropout
            << ", fan_in_fan_out " << (config.fan_in_fan_out ? "true" : "false") << ", bias "
            << config.json.value("bias", "none") << "\n";
  std::cout << "  target_modules " << vera::io::detail::targets_json(config.target_modules).dump()
            << "\n";
  if (config.base_model_name_or_path)
    std::cout << "  base model " << *config.base_model_name_or_path << "\n";
}

void print_unprefixed() {
  std::cout << "  keys: without PEFT's 'base_model.model.' prefix (as transformers' own PEFT "
               "integration saves them); a re-save adds it\n";
}

// One modules_to_save copy or trained bias: what a merge does with it.
void print_trained(vera::io::trained_kind kind, const std::string& key, const std::string& what,
                   const std::string& target) {
  std::cout << "  " << vera::io::detail::trained_kind_name(kind) << ": " << key << "  " << what;
  if (target.empty()) {
    std::cout << "  (kept for a re-save, not merged: PEFT's wrapper holds it twice)\n";
  } else {
    std::cout << "  -> replaces " << target << " in a merge\n";
  }
}

// Without base shapes the in_features of a seed-only adapter are unknown; what the file shows
// is still checked and printed.
void inspect_adapter_alone(const fs::path& dir, const vera::io::vera_config& config) {
  const vera::io::safetensors_file file(dir / vera::io::adapter_weights_file);
  auto found = vera::io::detail::split_tensors(file);
  vera::io::detail::classify_trained(found, config);
  std::cout << "  " << vera::io::adapter_weights_file << ": " << file.tensors().size()
            << " tensors, " << human_bytes(file.data_size()) << "\n";
  if (found.prefix.empty()) print_unprefixed();
  std::cout << "  layers: " << found.layers.size() << "\n";
  for (const auto& [path, tensors] : found.layers) {
    std::cout << "    " << path << "  lambda_b "
              << (tensors.lambda_b ? describe(*tensors.lambda_b) : "MISSING") << "  lambda_d "
              << (tensors.lambda_d ? describe(*tensors.lambda_d) : "MISSING") << "\n";
  }
  for (const auto& entry : found.trained) {
    print_trained(entry.kind, entry.key, describe(*entry.info), entry.target);
  }
  for (const auto& other : found.extra)
    std::cout << "  not explained by the config (a load refuses it): " << other.info->name << "\n";
  if (found.a == nullptr || found.b == nullptr) {
    std::cout << "  projection: not saved; regenerated from projection_prng_key "
              << config.projection_prng_key
              << " (pass --base to check the layers against a model)\n";
    return;
  }
  std::cout << "  projection: saved, vera_A " << describe(*found.a) << ", vera_B "
            << describe(*found.b) << "\n";
  if (found.a->shape.size() != 2 || found.b->shape.size() != 2 ||
      !vera::io::detail::is_convertible(found.a->type) || !vera::io::detail::is_convertible(found.b->type)) {
    throw vera::format_error(file.source() + ": vera_A / vera_B are not floating-point matrices");
  }
  const vera::index rank = config.r, max_in = static_cast<vera::index>(found.a->shape[1]),
                    max_out = static_cast<vera::index>(found.b->shape[0]);
  if (found.a->shape[0] != static_cast<std::uint64_t>(rank) ||
      found.b->shape[1] != static_cast<std::uint64_t>(rank)) {
    throw vera::format_error(file.source() +
                             ": vera_A / vera_B do not have rank r = " + std::to_string(rank));
  }
  const vera::projection<double> regenerated({config.projection_prng_key, rank, max_in, max_out});
  const auto a = file.values<double>(*found.a);
  const auto b = file.values<double>(*found.b);
  print_difference("vera_A", vera::io::detail::compare(
                                 Eigen::Map<const vera::row_matrix<double>>(a.data(), rank, max_in),
                                 regenerated.a()));
  print_difference("vera_B", vera::io::detail::compare(Eigen::Map<const vera::row_matrix<double>>(
                                                           b.data(), max_out, rank),
                                                       regenerated.b()));
}

void inspect_adapter_with_base(const fs::path& dir, const vera::io::vera_config& config,
                               const fs::path& base_path, const arguments& args) {
  const vera::io::safetensors_file base(base_path);
  const vera::io::safetensors_file weights(dir / vera::io::adapter_weights_file);
  const auto shapes = vera::io::adapted_layer_shapes(base, weights, config, parse_layouts(args));
  vera::io::load_options options;
  options.allow_extra_tensors = true;
  const auto loaded = vera::io::load_peft_adapter<double>(config, weights, shapes, options);
  const auto& shared = loaded.model.shared_projection();
  std::cout << "  layers: " << loaded.model.size() << ", trainable parameters "
            << loaded.model.trainable_parameters() << ", projection " << shared.rank() << " x "
            << shared.max_in() << " / " << shared.max_out() << " x " << shared.rank() << "\n";
  for (const auto& [path, layer] : loaded.model) {
    std::cout << "    " << path << "  in " << layer.in_features() << "  out "
              << layer.out_features() << (layer.options().fan_in_fan_out ? "  Conv1D" : "  Linear")
              << "  max |b| " << layer.lambda_b().cwiseAbs().maxCoeff()
              << "  max |d| " << layer.lambda_d().cwiseAbs().maxCoeff() << "\n";
  }
  if (loaded.report.projection_in_file) {
    std::cout << "  projection: saved, "
              << (loaded.report.used_saved_projection ? "used" : "not used") << "\n";
    print_difference("vera_A", loaded.report.a_difference);
    print_difference("vera_B", loaded.report.b_difference);
  } else {
    std::cout << "  projection: regenerated from projection_prng_key " << config.projection_prng_key
              << "\n";
  }
  if (!loaded.report.prefixed_keys) print_unprefixed();
  for (const auto& t : loaded.trained) {
    print_trained(t.kind, t.key,
                  std::string(vera::io::dtype_name(t.type)) + " " + vera::io::shape_string(t.shape),
                  t.target);
  }
  for (const auto& name : loaded.report.ignored_tensors)
    std::cout << "  not explained by the config (a load refuses it): " << name << "\n";
  for (const auto& warning : loaded.report.warnings) std::cout << "  warning: " << warning << "\n";
}

int run_inspect(const arguments& args) {
  if (args.positional.size() != 1) throw usage_error("inspect takes one PATH");
  const fs::path path = args.positional[0];
  if (!fs::is_directory(path)) {
    if (args.get("base") || args.get("conv1d") || args.get("linear"))
      throw usage_error("--base, --conv1d and --linear apply to adapter directories only");
    inspect_file(path);
    return exit_ok;
  }
  const auto config = vera::io::vera_config::read(path);
  std::cout << path.string() << ": PEFT VeRA adapter\n";
  print_config(config);
  if (const auto base = args.get("base")) {
    inspect_adapter_with_base(path, config, *base, args);
  } else {
    if (args.get("conv1d") || args.get("linear"))
      throw usage_error("--conv1d and --linear need --base (they name layouts of its weights)");
    inspect_adapter_alone(path, config);
  }
  return exit_ok;
}

// ---- projection ------------------------------------------------------------------------------

int run_projection(const arguments& args) {
  if (!args.positional.empty()) throw usage_error("projection takes no positional arguments");
  vera::projection_spec spec;
  spec.seed = parse_unsigned("seed", args.required("seed"));
  spec.rank = parse_extent("r", args.required("r"));
  spec.max_in = parse_extent("max-in", args.required("max-in"));
  spec.max_out = parse_extent("max-out", args.required("max-out"));
  const auto kind = args.get("generator").value_or("peft");
  if (kind != "peft" && kind != "philox")
    throw usage_error("--generator expects 'peft' or 'philox', got '" + kind + "'");
  spec.kind = kind == "peft" ? vera::generator::peft : vera::generator::philox;
  spec.rounding = parse_rounding(args);
  const dtype stored = parse_dtype_option(args, {dtype::f32, dtype::f64});
  const fs::path output = args.required("output");

  const vera::projection<float> shared(spec);
  vera::io::safetensors_writer writer;
  writer.set_metadata("generator", kind);
  writer.set_metadata("seed", std::to_string(spec.seed));
  writer.set_metadata("r", std::to_string(spec.rank));
  writer.set_metadata("max_in", std::to_string(spec.max_in));
  writer.set_metadata("max_out", std::to_string(spec.max_out));
  if (spec.kind == vera::generator::peft) {
    writer.set_metadata("rounding",
                        spec.rounding == vera::peft_rounding::fused ? "fused" : "separate");
  }
  writer.set_metadata("vera_version", vera::version_string);
  writer.add("vera_A", stored,
             {static_cast<std::uint64_t>(spec.rank), static_cast<std::uint64_t>(spec.max_in)},
             shared.a().data());
  writer.add("vera_B", stored,
             {static_cast<std::uint64_t>(spec.max_out), static_cast<std::uint64_t>(spec.rank)},
             shared.b().data());
  writer.write(output);
  std::cerr << "vera projection: wrote " << output.string() << " (A " << spec.rank << " x "
            << spec.max_in << ", B " << spec.max_out << " x " << spec.rank << ")\n";
  return exit_ok;
}

// ---- merge -----------------------------------------------------------------------------------

// Prints a progress line on stderr at most every half second, for writes worth watching.
class progress_printer {
 public:
  explicit progress_printer(std::uint64_t total) : enabled_(total >= (std::uint64_t{64} << 20)) {}
  void operator()(std::uint64_t done, std::uint64_t total) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last_ < std::chrono::milliseconds(500)) return;
    last_ = now;
    std::fprintf(stderr, "\rvera merge: %3d%% (%s of %s)",
                 static_cast<int>(100.0 * double(done) / double(total)), human_bytes(done).c_str(),
                 human_bytes(total).c_str());
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point last_{};
};

// ", replaced 2 tensors (modules_to_save, trained biases)" when the adapter carries any.
template <class T>
std::string replaced_text(const vera::io::peft_adapter<T>& loaded) {
  std::size_t count = 0;
  for (const auto& t : loaded.trained) count += t.target.empty() ? 0 : 1;
  if (count == 0) return "";
  return ", replaced " + std::to_string(count) + " tensors (modules_to_save, trained biases)";
}

// The adapter to merge (load warnings printed) and the merge settings from the command line.
template <class T>
vera::io::peft_adapter<T> load_for_merge(const vera::io::vera_config& config,
                                         const vera::io::safetensors_file& adapter_file,
                                         const vera::io::layer_shapes& shapes, const arguments& args,
                                         vera::io::merge_options& merge) {
  vera::io::load_options options;
  options.rounding = parse_rounding(args);
  auto loaded = vera::io::load_peft_adapter<T>(config, adapter_file, shapes, options);
  for (const auto& warning : loaded.report.warnings)
    std::cerr << "vera merge: warning: " << warning << "\n";
  merge.match_peft_precision = args.get("adapter-precision").value_or("peft") == "peft";
  merge.projection_from_file = loaded.report.used_saved_projection;
  return loaded;
}

// Several adapters on one model, merged one after the other as PEFT's merge_and_unload does
// with all of them active.
template <class T>
void merge_several_as(const vera::io::safetensors_file& base, const std::vector<fs::path>& dirs,
                      const vera::io::layer_shapes& shapes, const arguments& args,
                      const fs::path& output) {
  vera::io::load_options options;
  options.rounding = parse_rounding(args);
  const auto adapters = vera::io::load_peft_adapters<T>(dirs, shapes, options);
  for (std::size_t k = 0; k < adapters.size(); ++k) {
    for (const auto& warning : adapters[k].report.warnings)
      std::cerr << "vera merge: warning: " << dirs[k].string() << ": " << warning << "\n";
  }
  vera::io::merge_options merge;
  merge.match_peft_precision = args.get("adapter-precision").value_or("peft") == "peft";
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, base, adapters, merge);
  progress_printer progress(writer.data_size());
  writer.on_progress(
      [&progress](std::uint64_t done, std::uint64_t total) { progress(done, total); });
  writer.write(output);
  std::size_t layers = 0;
  for (const auto& adapter : adapters) layers += adapter.model.size();
  std::cerr << "vera merge: merged " << adapters.size() << " adapters (" << layers
            << " adapted layers in all) into " << output.string() << "\n";
}

template <class T>
void merge_as(const vera::io::safetensors_file& base, const vera::io::vera_config& config,
              const vera::io::safetensors_file& adapter_file, const vera::io::layer_shapes& shapes,
              const arguments& args, const fs::path& output) {
  vera::io::merge_options merge;
  const auto loaded = load_for_merge<T>(config, adapter_file, shapes, args, merge);
  vera::io::safetensors_writer writer;
  vera::io::add_merged_model(writer, base, loaded, merge);
  progress_printer progress(writer.data_size());
  writer.on_progress(
      [&progress](std::uint64_t done, std::uint64_t total) { progress(done, total); });
  writer.write(output);
  std::cerr << "vera merge: merged " << loaded.model.size() << " layers" << replaced_text(loaded)
            << " into " << output.string() << "\n";
}

template <class T>
void sharded_merge_as(const vera::io::shard_index& index, const vera::io::vera_config& config,
                      const vera::io::safetensors_file& adapter_file,
                      const vera::io::layer_shapes& shapes, const arguments& args,
                      const fs::path& output) {
  vera::io::merge_options merge;
  const auto loaded = load_for_merge<T>(config, adapter_file, shapes, args, merge);
  vera::io::merge_sharded_model(
      index, loaded.model, output, merge,
      [](std::size_t done, std::size_t total) {
        std::fprintf(stderr, "\rvera merge: shard %zu of %zu", done, total);
        if (done == total) std::fprintf(stderr, "\n");
        std::fflush(stderr);
      },
      loaded.trained);
  std::cerr << "vera merge: merged " << loaded.model.size() << " layers" << replaced_text(loaded)
            << " into " << index.shards.size() << " shards in " << output.string() << "\n";
}

int run_sharded_merge(const fs::path& index_path, const fs::path& adapter_dir,
                      const fs::path& output, const arguments& args) {
  const auto index = vera::io::read_shard_index(index_path);
  const auto config = vera::io::vera_config::read(adapter_dir);
  const vera::io::safetensors_file adapter_file(adapter_dir / vera::io::adapter_weights_file);
  const auto paths = vera::io::peft_layer_paths(adapter_file);
  const auto shapes = vera::io::adapted_layer_shapes(index, adapter_file, config, parse_layouts(args));
  bool wide = false;
  for (const auto& path : paths) {
    const vera::io::safetensors_file shard(index.directory() / index.shard_of(path + ".weight"));
    wide = wide || shard.at(path + ".weight").type == dtype::f64;
  }
  if (wide) {
    sharded_merge_as<double>(index, config, adapter_file, shapes, args, output);
  } else {
    sharded_merge_as<float>(index, config, adapter_file, shapes, args, output);
  }
  return exit_ok;
}

int run_several_merge(const fs::path& base_path, const std::vector<fs::path>& dirs,
                      const fs::path& output, const arguments& args) {
  const vera::io::safetensors_file base(base_path);
  // Each adapter's layers with their layouts; a layout given on the command line goes to every
  // adapter that adapts the layer, and must name a layer of at least one.
  const auto given = parse_layouts(args);
  std::set<std::string> used;
  vera::io::layer_shapes shapes;
  for (const auto& dir : dirs) {
    const auto config = vera::io::vera_config::read(dir);
    const vera::io::safetensors_file adapter_file(dir / vera::io::adapter_weights_file);
    vera::io::layer_layouts own;
    for (const auto& path : vera::io::peft_layer_paths(adapter_file)) {
      if (const auto it = given.find(path); it != given.end()) own.insert(*it);
    }
    for (const auto& [path, layout] : own) used.insert(path);
    for (const auto& [path, shape] : vera::io::adapted_layer_shapes(base, adapter_file, config, own))
      shapes.emplace(path, shape);
  }
  for (const auto& [path, layout] : given) {
    if (used.count(path) == 0)
      throw vera::value_error("a layout is given for layer '" + path + "', which no --adapter adapts");
  }
  bool wide = false;
  for (const auto& [path, shape] : shapes) wide = wide || base.at(path + ".weight").type == dtype::f64;
  if (wide) {
    merge_several_as<double>(base, dirs, shapes, args, output);
  } else {
    merge_several_as<float>(base, dirs, shapes, args, output);
  }
  return exit_ok;
}

int run_merge(const arguments& args) {
  if (!args.positional.empty()) throw usage_error("merge takes no positional arguments");
  const fs::path base_path = args.required("base");
  const fs::path adapter_dir = args.required("adapter");
  const fs::path output = args.required("output");
  parse_rounding(args);  // usage errors before any work
  parse_layouts(args);
  const auto precision = args.get("adapter-precision").value_or("peft");
  if (precision != "peft" && precision != "full") {
    throw usage_error("--adapter-precision expects 'peft' or 'full', got '" + precision + "'");
  }

  const std::string index_suffix = ".index.json";
  const std::string base_name = base_path.filename().string();
  const bool sharded =
      base_name.size() > index_suffix.size() &&
      base_name.compare(base_name.size() - index_suffix.size(), index_suffix.size(), index_suffix) == 0;
  const auto adapter_dirs = args.all("adapter");
  if (adapter_dirs.size() > 1) {
    if (sharded) throw usage_error("several --adapter options need a single model file as --base");
    return run_several_merge(base_path, {adapter_dirs.begin(), adapter_dirs.end()}, output, args);
  }
  if (sharded) return run_sharded_merge(base_path, adapter_dir, output, args);
  const vera::io::safetensors_file base(base_path);
  const auto config = vera::io::vera_config::read(adapter_dir);
  const vera::io::safetensors_file adapter_file(adapter_dir / vera::io::adapter_weights_file);
  const auto paths = vera::io::peft_layer_paths(adapter_file);
  const auto shapes = vera::io::adapted_layer_shapes(base, adapter_file, config, parse_layouts(args));
  bool wide = false;
  for (const auto& path : paths) wide = wide || base.at(path + ".weight").type == dtype::f64;
  if (wide) {
    merge_as<double>(base, config, adapter_file, shapes, args, output);
  } else {
    merge_as<float>(base, config, adapter_file, shapes, args, output);
  }
  return exit_ok;
}

// ---- export-lora -----------------------------------------------------------------------------

vera::io::layer_shapes read_shapes_json(const fs::path& path) {
  const auto text = vera::io::read_text_file(path, vera::io::detail::max_config_size);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw vera::format_error("'" + path.string() + "': not valid JSON: " + e.what());
  }
  if (!json.is_object())
    throw vera::format_error("'" + path.string() + "': expected {\"<path>\": [in, out], ...}");
  vera::io::layer_shapes shapes;
  for (const auto& [name, value] : json.items()) {
    if (!value.is_array() || value.size() != 2 || !value[0].is_number_unsigned() ||
        !value[1].is_number_unsigned() || value[0].get<std::uint64_t>() == 0 ||
        value[1].get<std::uint64_t>() == 0 ||
        value[0].get<std::uint64_t>() > (std::uint64_t{1} << 40) ||
        value[1].get<std::uint64_t>() > (std::uint64_t{1} << 40)) {
      throw vera::format_error("'" + path.string() + "': layer '" + name +
                               "' must map to [in, out], two positive "
                               "integers, got " +
                               value.dump());
    }
    shapes[name] = {value[0].get<vera::index>(), value[1].get<vera::index>()};
  }
  return shapes;
}

template <class T>
void export_as(const fs::path& dir, const vera::io::layer_shapes& shapes, const fs::path& output,
               dtype stored) {
  const auto loaded = vera::io::load_peft_adapter<T>(dir, shapes);
  for (const auto& warning : loaded.report.warnings)
    std::cerr << "vera export-lora: warning: " << warning << "\n";
  vera::io::export_lora(loaded, output, stored);
  std::cerr << "vera export-lora: wrote a LoRA adapter with " << loaded.model.size()
            << " layers, r " << loaded.config.r;
  if (!loaded.trained.empty())
    std::cerr << ", and " << loaded.trained.size() << " modules_to_save / bias tensors copied";
  std::cerr << ", to " << output.string() << "\n";
}

int run_export(const arguments& args) {
  if (args.positional.size() != 1) throw usage_error("export-lora takes one adapter DIR");
  const fs::path dir = args.positional[0];
  const fs::path output = args.required("output");
  const dtype stored = parse_dtype_option(args, {dtype::f32, dtype::f64, dtype::bf16, dtype::f16});
  const auto base = args.get("base");
  const auto shapes_file = args.get("shapes");
  if (base.has_value() == shapes_file.has_value()) {
    throw usage_error(
        "export-lora needs exactly one of --base MODEL.safetensors and --shapes SHAPES.json (the "
        "layers' in_features are not stored in a seed-only adapter)");
  }
  vera::io::layer_shapes shapes;
  if (base) {
    const auto config = vera::io::vera_config::read(dir);
    const vera::io::safetensors_file model(*base);
    const vera::io::safetensors_file weights(dir / vera::io::adapter_weights_file);
    shapes = vera::io::adapted_layer_shapes(model, weights, config, parse_layouts(args));
  } else {
    if (args.get("conv1d") || args.get("linear"))
      throw usage_error("--conv1d and --linear need --base (a LoRA export does not depend on layouts)");
    shapes = read_shapes_json(*shapes_file);
  }
  if (stored == dtype::f64) {
    export_as<double>(dir, shapes, output, stored);
  } else {
    export_as<float>(dir, shapes, output, stored);
  }
  return exit_ok;
}

// ---- dispatch --------------------------------------------------------------------------------

struct command {
  const char* name;
  const char* help;
  std::set<std::string> options;
  int (*run)(const arguments&);
  std::set<std::string> repeatable = {};  // options that may be given more than once
};

const std::vector<command>& commands() {
  static const std::vector<command> all{
      {"inspect", inspect_help, {"base", "conv1d", "linear"}, run_inspect, {"conv1d", "linear"}},
      {"projection",
       projection_help,
       {"seed", "r", "max-in", "max-out", "generator", "rounding", "dtype", "output"},
       run_projection},
      {"merge",
       merge_help,
       {"base", "adapter", "output", "rounding", "adapter-precision", "conv1d", "linear"},
       run_merge,
       {"adapter", "conv1d", "linear"}},
      {"export-lora",
       export_help,
       {"base", "shapes", "output", "dtype", "conv1d", "linear"},
       run_export,
       {"conv1d", "linear"}},
  };
  return all;
}

int run(const std::vector<std::string>& argv) {
  if (argv.empty()) {
    std::cerr << main_help;
    return exit_usage;
  }
  if (argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") {
    std::cout << main_help;
    return exit_ok;
  }
  if (argv[0] == "--version") {
    std::cout << "vera " << vera::version_string << "\n";
    return exit_ok;
  }
  for (const auto& cmd : commands()) {
    if (argv[0] != cmd.name) continue;
    try {
      const auto args = parse_arguments({argv.begin() + 1, argv.end()}, cmd.options, cmd.repeatable);
      if (args.help) {
        std::cout << cmd.help;
        return exit_ok;
      }
      return cmd.run(args);
    } catch (const usage_error& e) {
      std::cerr << "vera " << cmd.name << ": " << e.what() << "\nRun 'vera " << cmd.name
                << " --help' for usage.\n";
      return exit_usage;
    } catch (const std::exception& e) {
      std::cerr << "vera " << cmd.name << ": error: " << e.what() << "\n";
      return exit_failure;
    }
  }
  std::cerr << "vera: unknown command '" << argv[0]
            << "'\nRun 'vera --help' for the list of commands.\n";
  return exit_usage;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "vera: error: " << e.what() << "\n";
    return exit_failure;
  }
}
