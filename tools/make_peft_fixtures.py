#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Writes the PEFT golden files under tests/fixtures/peft/ and checks adapters saved by vera in PEFT.
"""Golden files for vera's PEFT interoperability tests, made with real torch, peft and safetensors.

    make_peft_fixtures.py [--out DIR]            write the fixtures (default: tests/fixtures/peft)
    make_peft_fixtures.py --check-vera DIR       load an adapter saved by vera into PEFT and compare
                                                 PEFT's outputs with DIR/vera_outputs.safetensors
    make_peft_fixtures.py --check-lora DIR       load a LoRA adapter written by `vera export-lora`
                                                 into PEFT; compare with PEFT's VeRA outputs
    make_peft_fixtures.py --check-merged FILE    load a model written by `vera merge`; compare with
                                                 PEFT's merged weights and VeRA outputs
    make_peft_fixtures.py --check-projection FILE  compare `vera projection` output with PEFT's A, B

Two tiny models are adapted with VeRA (r = 8, init_weights=False, then lambda_b and lambda_d set to
non-trivial values): "linear" (nn.Linear 16->12, 12->20, 20->8, plus an unadapted lm_head and an
int64 buffer; also as a bfloat16 copy with PEFT's merge into it) and "conv1d" (GPT-2 style transformers Conv1D 12->20, 20->12, fan_in_fan_out=True).
For each, the base weights, fixed inputs, PEFT's per-layer inputs/outputs (float32 and float64),
delta weights, merged weights and in-memory projections are saved, next to adapter directories
saved by PEFT itself (seed only, with projection, and bfloat16 with projection).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

import peft
from peft import PeftModel, VeraConfig, get_peft_model

RANK = 8
PRNG_KEY = 1234
TOKENS = 5
MODEL_SEED = 0
LAMBDA_SEED = 7
INPUT_SEED = 3


class LinearBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 12)
        self.up_proj = nn.Linear(12, 20)
        self.down_proj = nn.Linear(20, 8)

    def forward(self, x):
        h = F.gelu(self.q_proj(x))
        h = F.gelu(self.up_proj(h))
        return self.down_proj(h)


class TinyLinear(nn.Module):
    """Llama-like naming; lm_head is not adapted, position_ids is a non-float tensor to pass through."""

    in_features = 16
    targets = ["q_proj", "up_proj", "down_proj"]
    fan_in_fan_out = False

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([LinearBlock()])
        self.lm_head = nn.Linear(8, 5, bias=False)
        self.register_buffer("position_ids", torch.arange(TOKENS, dtype=torch.int64))

    def forward(self, x):
        return self.lm_head(self.model.layers[0](x))


class Conv1DBlock(nn.Module):
    def __init__(self):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.attn = nn.Module()
        self.attn.c_attn = Conv1D(20, 12)  # Conv1D(nf=out, nx=in): weight is in x out
        self.attn.c_proj = Conv1D(12, 20)

    def forward(self, x):
        return self.attn.c_proj(F.gelu(self.attn.c_attn(x)))


class TinyConv1D(nn.Module):
    """GPT-2 naming; Conv1D stores its weight as in x out, so PEFT needs fan_in_fan_out=True."""

    in_features = 12
    targets = ["c_attn", "c_proj"]
    fan_in_fan_out = True

    def __init__(self):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.h = nn.ModuleList([Conv1DBlock()])

    def forward(self, x):
        return self.transformer.h[0](x)


MODELS = {"linear": TinyLinear, "conv1d": TinyConv1D}


def versions():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "transformers": __import__("transformers").__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu,
        "machine": platform.machine(),
        "generator": "tools/make_peft_fixtures.py",
        "projection_prng_key": str(PRNG_KEY),
        "r": str(RANK),
    }


def generator_record(generator, **settings):
    """The versions record of a generator under tools/: versions() plus its name and settings."""
    record = versions()
    record.update({"generator": generator, **{k: str(v) for k, v in settings.items()}})
    return record


def finish_fixtures(directory, meta, versions_name="VERSIONS.json"):
    """Writes the versions record beside the fixtures and makes every file world-readable."""
    with open(os.path.join(directory, versions_name), "w", encoding="utf-8") as file:
        json.dump(meta, file, indent=2, sort_keys=True)
        file.write("\n")
    for root, _, files in os.walk(directory):
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)  # safetensors writes 0600
    print(json.dumps(meta, indent=2, sort_keys=True))


def fix_hash_seed():
    """Re-runs the script with PYTHONHASHSEED=0: PEFT keeps target_modules in a set, and a fixed
    hash seed makes the saved order reproducible."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))


def default_fixture_dir():
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                         "fixtures", "peft"))


def generator_main(write_fixtures, description):
    """Command line of a generator that only writes fixtures: `--out DIR` (default tests/fixtures/peft)."""
    fix_hash_seed()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_fixture_dir(), help="fixture directory to write into")
    return write_fixtures(os.path.normpath(parser.parse_args().out))


def base_model(kind):
    torch.manual_seed(MODEL_SEED)
    model = MODELS[kind]()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape))  # Conv1D starts with zero biases
    return model.eval()


def vera_config(kind, save_projection):
    return VeraConfig(
        r=RANK,
        target_modules=MODELS[kind].targets,
        projection_prng_key=PRNG_KEY,
        save_projection=save_projection,
        init_weights=False,
        fan_in_fan_out=MODELS[kind].fan_in_fan_out,
        vera_dropout=0.0,
    )


def vera_layers(peft_model):
    """PEFT's adapted layers by module path (the path inside the base model)."""
    prefix = "base_model.model."
    return {
        name[len(prefix):]: module
        for name, module in peft_model.named_modules()
        if hasattr(module, "vera_lambda_b") and name.startswith(prefix)
    }


def set_lambdas(peft_model):
    # init_weights=False already gives b = 1, d ~ N(0, 1); b is spread out as well so that a
    # mix-up of b between layers or elements cannot go unnoticed.
    generator = torch.Generator().manual_seed(LAMBDA_SEED)
    with torch.no_grad():
        for path in sorted(vera_layers(peft_model)):
            layer = vera_layers(peft_model)[path]
            b = layer.vera_lambda_b["default"]
            d = layer.vera_lambda_d["default"]
            b.copy_(1.0 + 0.5 * torch.randn(b.shape, generator=generator))
            d.copy_(torch.randn(d.shape, generator=generator))


def adapted_model(kind, save_projection):
    model = get_peft_model(base_model(kind), vera_config(kind, save_projection))
    set_lambdas(model)
    return model.eval()


def run_with_hooks(model, x):
    """Full output plus each adapted layer's input and output."""
    records = {}
    hooks = []
    for path, layer in vera_layers(model).items():
        def hook(module, inputs, output, path=path):
            records[path + ".input"] = inputs[0].detach().clone()
            records[path + ".output"] = output.detach().clone()

        hooks.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        records["output"] = model(x).detach().clone()
    for handle in hooks:
        handle.remove()
    return records


def save_adapter(model, directory):
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    model.save_pretrained(directory)
    readme = os.path.join(directory, "README.md")
    if os.path.exists(readme):
        os.remove(readme)  # the generated model card is large and says nothing the tests need


def projection_under_default_kernel():
    """A and B as torch's scalar (non-FMA) uniform_ kernel makes them, from a child process."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    code = (
        "import torch,sys,json;from peft.tuners.vera.model import _kaiming_init as k;"
        f"g=torch.Generator('cpu').manual_seed({PRNG_KEY});"
        "a=k((%d,%d),generator=g);b=k((%d,%d),generator=g);"
        "print(json.dumps({'cap':torch.backends.cpu.get_cpu_capability(),"
        "'a':a.view(torch.int32).flatten().tolist(),'b':b.view(torch.int32).flatten().tolist()}))"
    )
    return env, code


def write_fixtures(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    meta = versions()
    for kind in MODELS:
        model = adapted_model(kind, save_projection=False)
        layers = vera_layers(model)
        save_adapter(model, os.path.join(out_dir, f"{kind}_seed"))
        save_adapter(adapted_model(kind, save_projection=True), os.path.join(out_dir, f"{kind}_projection"))

        base_state = {k: v.contiguous() for k, v in base_model(kind).state_dict().items()}
        safetensors.torch.save_file(base_state, os.path.join(out_dir, f"{kind}_model.safetensors"),
                                    metadata=dict(meta, format="pt"))

        torch.manual_seed(INPUT_SEED)
        x = torch.randn(TOKENS, MODELS[kind].in_features)
        tensors = {"input": x}
        tensors.update(run_with_hooks(model, x))
        any_layer = next(iter(layers.values()))
        tensors["vera_A"] = any_layer.vera_A["default"].clone()
        tensors["vera_B"] = any_layer.vera_B["default"].clone()
        for path, layer in layers.items():
            tensors[path + ".delta_weight"] = layer.get_delta_weight("default").detach().clone()

        env, code = projection_under_default_kernel()
        max_out = tensors["vera_B"].shape[0]
        max_in = tensors["vera_A"].shape[1]
        child = subprocess.run([sys.executable, "-c", code % (RANK, max_in, max_out, RANK)], env=env,
                               check=True, capture_output=True, text=True)
        scalar = json.loads(child.stdout)
        tensors["vera_A.default_kernel"] = torch.tensor(scalar["a"], dtype=torch.int32).view(torch.float32).view(RANK, max_in)
        tensors["vera_B.default_kernel"] = torch.tensor(scalar["b"], dtype=torch.int32).view(torch.float32).view(max_out, RANK)
        meta_kind = dict(meta, default_kernel_capability=scalar["cap"])

        merged = adapted_model(kind, save_projection=False).merge_and_unload(safe_merge=True)
        for path in layers:
            tensors[path + ".merged_weight"] = merged.get_submodule(path).weight.detach().clone()

        if kind == "linear":
            # The seed-only adapter loaded onto a bfloat16 copy of the base model, then merged:
            # PEFT rounds A and B to bfloat16 there, keeps the loaded vectors in float32.
            bf16_base = base_model(kind).to(torch.bfloat16)
            safetensors.torch.save_file({k: v.contiguous() for k, v in bf16_base.state_dict().items()},
                                        os.path.join(out_dir, f"{kind}_bf16_model.safetensors"),
                                        metadata=dict(meta, format="pt"))
            loaded = PeftModel.from_pretrained(bf16_base, os.path.join(out_dir, f"{kind}_seed"))
            merged_bf16 = loaded.merge_and_unload(safe_merge=True)
            for path in layers:
                tensors[path + ".merged_weight_bf16"] = merged_bf16.get_submodule(path).weight.detach().clone()

        # float64 reference: every operand widens exactly, so these outputs are the float64 result.
        double_outputs = run_with_hooks(model.double(), x.double())
        for key, value in double_outputs.items():
            tensors[key + ".f64"] = value

        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()},
                                    os.path.join(out_dir, f"{kind}_io.safetensors"), metadata=meta_kind)

    bf16 = adapted_model("linear", save_projection=True).to(torch.bfloat16)
    save_adapter(bf16, os.path.join(out_dir, "linear_bf16_projection"))
    finish_fixtures(out_dir, meta)


def check_vera(directory, fixtures, tolerance):
    """Loads a vera-saved adapter into PEFT; compares with the outputs vera computed for it."""
    with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as file:
        config = json.load(file)
    kind = "conv1d" if config.get("fan_in_fan_out") else "linear"
    model = MODELS[kind]()
    model.load_state_dict(safetensors.torch.load_file(os.path.join(fixtures, f"{kind}_model.safetensors")))
    model = PeftModel.from_pretrained(model.eval(), directory).eval()
    expected = safetensors.torch.load_file(os.path.join(directory, "vera_outputs.safetensors"))
    golden = safetensors.torch.load_file(os.path.join(fixtures, f"{kind}_io.safetensors"))

    worst = 0.0
    layers = vera_layers(model)
    for path, layer in sorted(layers.items()):
        with torch.no_grad():
            got = layer(golden[path + ".input"])
        want = expected[path + ".output"]
        diff = (got - want).abs().max().item()
        scale = want.abs().max().item()
        worst = max(worst, diff / max(scale, 1.0))
        print(f"{path}: max |PEFT - vera| = {diff:.3e} (max |y| = {scale:.3e})")
    with torch.no_grad():
        got = model(golden["input"])
    diff = (got - expected["output"]).abs().max().item()
    worst = max(worst, diff / max(expected["output"].abs().max().item(), 1.0))
    print(f"model output: max |PEFT - vera| = {diff:.3e}")

    any_layer = next(iter(layers.values()))
    same_a = torch.equal(any_layer.vera_A["default"], golden["vera_A"])
    same_b = torch.equal(any_layer.vera_B["default"], golden["vera_B"])
    print(f"PEFT's projection equals the fixture's bit for bit: A {same_a}, B {same_b}")
    print(f"versions: torch {torch.__version__}, peft {peft.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    ok = worst <= tolerance
    print("OK" if ok else f"FAILED: relative difference {worst:.3e} > {tolerance:.1e}")
    return 0 if ok else 1


def compare_outputs(model, golden, kind, tolerance):
    """Runs the fixture's inputs through `model`; compares with PEFT's VeRA outputs in `golden`."""
    worst = 0.0
    for path in sorted(k[: -len(".input")] for k in golden if k.endswith(".input")):
        with torch.no_grad():
            got = model.get_submodule(path)(golden[path + ".input"])
        want = golden[path + ".output"]
        diff = (got - want).abs().max().item()
        worst = max(worst, diff / max(want.abs().max().item(), 1.0))
        print(f"{path}: max |got - PEFT VeRA| = {diff:.3e}")
    with torch.no_grad():
        got = model(golden["input"])
    diff = (got - golden["output"]).abs().max().item()
    worst = max(worst, diff / max(golden["output"].abs().max().item(), 1.0))
    print(f"model output: max |got - PEFT VeRA| = {diff:.3e}")
    ok = worst <= tolerance
    print("OK" if ok else f"FAILED: relative difference {worst:.3e} > {tolerance:.1e}")
    return 0 if ok else 1


def check_lora(directory, fixtures, tolerance):
    with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as file:
        config = json.load(file)
    kind = "conv1d" if config.get("fan_in_fan_out") else "linear"
    model = MODELS[kind]()
    model.load_state_dict(safetensors.torch.load_file(os.path.join(fixtures, f"{kind}_model.safetensors")))
    model = PeftModel.from_pretrained(model.eval(), directory).eval()
    print(f"loaded {type(model.peft_config['default']).__name__} r={config['r']} lora_alpha={config['lora_alpha']}")
    golden = safetensors.torch.load_file(os.path.join(fixtures, f"{kind}_io.safetensors"))
    return compare_outputs(model.base_model.model, golden, kind, tolerance)


def check_merged(path, fixtures, tolerance):
    merged = safetensors.torch.load_file(path)
    kind = "conv1d" if any(k.startswith("transformer.") for k in merged) else "linear"
    model = MODELS[kind]()
    model.load_state_dict(merged)
    golden = safetensors.torch.load_file(os.path.join(fixtures, f"{kind}_io.safetensors"))
    base = safetensors.torch.load_file(os.path.join(fixtures, f"{kind}_model.safetensors"))
    for key, value in base.items():
        if not torch.equal(value, merged[key]) and key[: -len(".weight")] + ".merged_weight" not in golden:
            print(f"FAILED: {key} changed although it is not an adapted weight")
            return 1
    for key in sorted(k for k in golden if k.endswith(".merged_weight")):
        weight = merged[key[: -len(".merged_weight")] + ".weight"]
        diff = (weight - golden[key]).abs().max().item()
        print(f"{key[: -len('.merged_weight')]}.weight: max |vera - PEFT merge| = {diff:.3e}")
    return compare_outputs(model.eval(), golden, kind, tolerance)


def check_projection(path, fixtures):
    ours = safetensors.torch.load_file(path)
    golden = safetensors.torch.load_file(os.path.join(fixtures, "linear_io.safetensors"))
    same = torch.equal(ours["vera_A"], golden["vera_A"]) and torch.equal(ours["vera_B"], golden["vera_B"])
    print(f"vera projection equals PEFT's A and B bit for bit: {same}")
    return 0 if same else 1


def main():
    fix_hash_seed()
    default_out = default_fixture_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_out, help="fixture directory to write")
    parser.add_argument("--check-vera", metavar="DIR", help="VeRA adapter directory saved by vera")
    parser.add_argument("--fixtures", default=default_out, help="fixture directory (for the checks)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest accepted |PEFT - vera| / max(1, max |y|) (for the checks)")
    parser.add_argument("--check-lora", metavar="DIR", help="LoRA adapter directory from `vera export-lora`")
    parser.add_argument("--check-merged", metavar="FILE", help="model file from `vera merge`")
    parser.add_argument("--check-projection", metavar="FILE",
                        help="file from `vera projection --seed 1234 --r 8 --max-in 20 --max-out 20`")
    args = parser.parse_args()
    if args.check_vera:
        return check_vera(args.check_vera, args.fixtures, args.tolerance)
    if args.check_lora:
        return check_lora(args.check_lora, args.fixtures, args.tolerance)
    if args.check_merged:
        return check_merged(args.check_merged, args.fixtures, args.tolerance)
    if args.check_projection:
        return check_projection(args.check_projection, args.fixtures)
    write_fixtures(os.path.normpath(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
