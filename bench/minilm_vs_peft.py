#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""all-MiniLM-L6-v2 with VeRA (query, value) + classifier: vera (bench/minilm_step.cpp) against
PyTorch + PEFT eager, one training step and one inference batch, 1 and 2 threads, with peak RSS.

Driver (default): the C++ side writes the adapter it starts from (PEFT's format), the batch and its
logits, loss, gradients and post-step loss; PEFT loads that adapter and must reproduce them before
anything is timed. Then every configuration (side x task x threads) runs as its own process, in
interleaved rounds (C++ and PEFT alternately, the order flipped each round); the table shows the
median over rounds of each process's median step. Peak RSS is each process's ru_maxrss.

  ../peer-venv/bin/python bench/minilm_vs_peft.py --cxx build/default/bench/minilm_step_eigen \
      [--cxx build/default/bench/minilm_step_onednn] [--rounds 3] [--steps 10] [--threads 1,2] [--out DIR]
Each --cxx is one vera contender (its name: the binary's suffix, the GEMM provider it was built with).

PEFT side alone (what the driver starts):
  python bench/minilm_vs_peft.py --side peft --reference DIR --task train|infer --threads T [--check]
Needs torch, transformers and peft (scripts/make-peer-venv.sh); not part of the test suite.
"""
import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOPICS = 5
TOLERANCE = 1e-4  # max abs difference / max abs value, for logits and gradients


def thread_env(threads):
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["OMP_WAIT_POLICY"] = "passive"
    return env


# ----------------------------------------------------------------------------------------------
# PEFT side


def relative_error(got, want):
    import torch
    want = torch.as_tensor(want, dtype=torch.float32)
    got = got.detach().to(torch.float32).reshape(want.shape)
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def peft_side(args):
    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import peft
    import transformers
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    ref = json.loads((args.reference / "reference.json").read_text())
    # No dropout anywhere, as the C++ side (VeRA's own dropout is 0 in the saved config).
    base = BertForSequenceClassification.from_pretrained(
        str(args.model), num_labels=TOPICS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = PeftModel.from_pretrained(base, str(args.reference / "adapter"), is_trainable=True)
    shape = (ref["batch"], ref["length"])
    batch = {name: torch.tensor(ref[name], dtype=torch.long).reshape(shape)
             for name in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.tensor(ref["labels"], dtype=torch.long)

    vera_params, head_decay, head_plain = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "vera_lambda" in name:
            vera_params.append(p)
        elif name.endswith("classifier.modules_to_save.default.weight"):
            head_decay.append(p)
        elif name.endswith("classifier.modules_to_save.default.bias"):
            head_plain.append(p)
        else:
            raise SystemExit(f"unexpected trainable parameter {name}")
    optimizer = torch.optim.AdamW([
        {"params": vera_params, "lr": 1e-2, "weight_decay": 0.0},
        {"params": head_decay, "lr": 5e-3, "weight_decay": 0.01},
        {"params": head_plain, "lr": 5e-3, "weight_decay": 0.0}], betas=(0.9, 0.999), eps=1e-8)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        return loss

    def infer():
        model.eval()
        with torch.inference_mode():
            return model(**batch).logits

    info = {"side": "peft", "torch": torch.__version__, "peft": peft.__version__,
            "transformers": transformers.__version__,
            "attention": getattr(base.config, "_attn_implementation", "?"),
            "trainable": sum(p.numel() for p in vera_params + head_decay + head_plain)}
    if args.check:
        errors = {"logits": relative_error(infer(), ref["logits"])}
        loss = train_step()  # the gradients of this step are still in .grad
        errors["loss"] = abs(loss.item() - ref["loss"]) / abs(ref["loss"])
        named = dict(model.named_parameters())
        for key, want in ref["grad"].items():
            if key == "classifier.weight":
                name = "base_model.model.classifier.modules_to_save.default.weight"
            else:
                name = "base_model.model." + key + ".default"
            errors["grad " + key] = relative_error(named[name].grad, want)
        with torch.no_grad():
            after = model(**batch, labels=labels).loss.item()  # eval-free: no dropout either way
        errors["loss after one AdamW step"] = abs(after - ref["loss_after_step"]) / abs(ref["loss_after_step"])
        info["loss_before_after_step"] = [ref["loss"], after]
        info["check"] = errors
        info["check_passed"] = all(e <= TOLERANCE for e in errors.values())
        print(json.dumps(info), flush=True)
        return 0 if info["check_passed"] else 1

    run = train_step if args.task == "train" else infer
    for _ in range(args.warmup):
        run()
    ms = []
    for _ in range(args.steps):
        start = time.perf_counter()
        run()
        ms.append(1e3 * (time.perf_counter() - start))
    info.update({"task": args.task, "threads": args.threads, "ms": ms, "median_ms": statistics.median(ms),
                 "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 "gemm": gemm_of_torch()})
    print(json.dumps(info), flush=True)
    return 0


def gemm_of_torch():
    import torch
    config = torch.__config__.show()
    parts = []
    if torch.backends.mkl.is_available():
        parts.append("MKL")
    if torch.backends.mkldnn.is_available():
        parts.append("oneDNN (mkldnn)")
    blas = [line.strip() for line in config.splitlines() if "BLAS_INFO" in line]
    if blas:
        parts.append(blas[0].split(",")[0])
    parts.append("CPU capability " + torch.backends.cpu.get_cpu_capability())
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Driver


def run_json(command, env, timeout):
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, command))}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def load_average():
    return os.getloadavg()[0]


def cpu_model():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def contender_name(path):
    return "vera-" + pathlib.Path(path).name.rsplit("_", 1)[-1]


def driver(args):
    contenders = [(contender_name(c), str(c)) for c in args.cxx]
    cxx = contenders[0][1]
    me = [sys.executable, str(pathlib.Path(__file__).resolve())]
    common_cxx = ["--model", str(args.model), "--fortunes", str(args.fortunes)]
    common_py = ["--model", str(args.model)]
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="minilm_vs_peft_"))
    reference = workdir / "reference"
    run_json([cxx, "--reference", str(reference)] + common_cxx, thread_env(1), args.timeout)
    check = run_json(me + ["--side", "peft", "--reference", str(reference), "--check", "--threads", "1"] + common_py,
                     thread_env(1), args.timeout)[0]
    print("same batch, same starting adapter; PEFT against vera (max abs difference / max abs value):")
    for name, error in check["check"].items():
        print(f"  {name}: {error:.2g}")
    if not check["check_passed"]:
        raise SystemExit(f"PEFT does not reproduce vera's numbers within {TOLERANCE:g}; nothing timed")

    records = []
    loads = []
    for rnd in range(args.rounds):
        for threads in args.threads:
            for task in ("train", "infer"):
                sides = [(name, [path, "--task", task, "--threads", str(threads), "--steps", str(args.steps),
                                 "--warmup", str(args.warmup)] + common_cxx) for name, path in contenders]
                sides.append(("peft", me + ["--side", "peft", "--reference", str(reference), "--task", task,
                                            "--threads", str(threads), "--steps", str(args.steps),
                                            "--warmup", str(args.warmup)] + common_py))
                if rnd % 2 == 1:
                    sides.reverse()
                for side, command in sides:
                    loads.append(load_average())
                    rec = run_json(command, thread_env(threads), args.timeout)[0]
                    rec["round"] = rnd
                    rec["side"] = side
                    records.append(rec)
                    print(f"round {rnd + 1}/{args.rounds} {side:12} {task:5} threads={threads}: "
                          f"median {rec['median_ms']:.1f} ms, peak RSS {rec['peak_rss_kib'] / 1024:.0f} MiB "
                          f"(load {loads[-1]:.2f})", flush=True)
    profiles = []
    if args.profile:
        for name, path in contenders:
            out = run_json([path, "--task", "train", "--threads", "1", "--steps", str(args.steps), "--warmup",
                            str(args.warmup), "--profile"] + common_cxx, thread_env(1), args.timeout)
            profile = next(r for r in out if "phases" in r)
            profile["side"] = name
            profiles.append(profile)

    def cell(side, task, threads, key):
        values = [r[key] for r in records if r["side"] == side and r["task"] == task and r["threads"] == threads]
        return statistics.median(values)

    names = [name for name, _ in contenders]
    first = {side: next(r for r in records if r["side"] == side) for side in names + ["peft"]}
    lines = [f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; load average (1 min) when each process "
             f"started: {min(loads):.2f} to {max(loads):.2f}, median {statistics.median(loads):.2f}."]
    for name in names:
        lines.append(f"{name}: GEMM {first[name]['gemm']}.")
    lines += [f"PEFT: PyTorch {first['peft']['torch']} + PEFT {first['peft']['peft']} + transformers "
              f"{first['peft']['transformers']} (attention: {first['peft']['attention']}), eager, float32; "
              f"GEMM {first['peft']['gemm']}.",
              f"Batch {first[names[0]]['batch']} x {first[names[0]]['length']} tokens, VeRA r = "
              f"{first[names[0]]['rank']} on the 12 query/value layers + classifier; each process: median of "
              f"{args.steps} steps after {args.warmup} warm-up; each cell: median over {args.rounds} interleaved "
              f"rounds. Ratios: PEFT time / vera time, vera peak RSS / PEFT peak RSS.",
              ""]
    header = "| task | threads | PEFT ms | PEFT peak RSS |"
    rule = "|---|---:|---:|---:|"
    for name in names:
        header += f" {name} ms | speed-up | {name} peak RSS | memory ratio |"
        rule += "---:|---:|---:|---:|"
    lines += [f"Before timing, PEFT (from the adapter the C++ side saved) reproduced its numbers on the batch: "
              + ", ".join(f"{name} {error:.1e}" for name, error in check["check"].items())
              + f" (max abs difference / max abs value; the step moved the loss from "
              f"{check['loss_before_after_step'][0]:.4f} to {check['loss_before_after_step'][1]:.4f}).", "",
              header, rule]
    for task in ("train", "infer"):
        for threads in args.threads:
            p = cell("peft", task, threads, "median_ms")
            pm = cell("peft", task, threads, "peak_rss_kib")
            row = (f"| {'training step' if task == 'train' else 'inference batch'} | {threads} | {p:.0f} | "
                   f"{pm / 1024:.0f} MiB |")
            for name in names:
                v = cell(name, task, threads, "median_ms")
                vm = cell(name, task, threads, "peak_rss_kib")
                row += f" {v:.0f} | {p / v:.2f}x | {vm / 1024:.0f} MiB | {vm / pm:.2f} |"
            lines.append(row)
    lines.append("")
    for name in names:
        for threads in args.threads:
            counts = [r["allocations_per_step"] for r in records if r["side"] == name and r["threads"] == threads]
            lines.append(f"Heap allocations in a timed {name} step or batch, {threads} thread(s): at most {max(counts)}.")
    for profile in profiles:
        total = sum(p["ms_per_step"] for p in profile["phases"])
        lines += ["", f"Where the {profile['side']} training step goes (1 thread, {profile['profile_steps']} steps, "
                  f"{total:.0f} ms per step under the timers):", "", "| phase | ms per step | share |",
                  "|---|---:|---:|"]
        for p in sorted(profile["phases"], key=lambda p: -p["ms_per_step"]):
            lines.append(f"| {p['phase']} | {p['ms_per_step']:.1f} | {100 * p['ms_per_step'] / total:.1f}% |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table + "\n")
        with open(args.out / "results.jsonl", "w") as f:
            for r in [check] + records + profiles:
                f.write(json.dumps(r) + "\n")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=["peft"], help="run one PEFT configuration (started by the driver)")
    p.add_argument("--cxx", type=pathlib.Path, action="append",
                   help="a minilm_step binary (repeatable; default build/default/bench/minilm_step_eigen)")
    p.add_argument("--model", type=pathlib.Path, default=ROOT / "data" / "minilm")
    p.add_argument("--fortunes", type=pathlib.Path, default=pathlib.Path("/usr/share/games/fortunes"))
    p.add_argument("--reference", type=pathlib.Path)
    p.add_argument("--task", choices=["train", "infer"], default="train")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--check", action="store_true")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", type=pathlib.Path)
    args = p.parse_args()
    if args.side == "peft":
        args.threads = int(args.threads)
        return peft_side(args)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.cxx = args.cxx or [ROOT / "build" / "default" / "bench" / "minilm_step_eigen"]
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
