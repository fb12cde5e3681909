#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Runs PEFT's VeRA (bench/peft_cpu.py in the peer venv) and C++ contenders on the same shapes in
# interleaved rounds, and tabulates the median times with PEFT/contender speed-ups.
#
# Usage:
#   python3 bench/vs_peft.py [--venv ../peer-venv] [--contender NAME=COMMAND ...] [--peer-only]
#       [--shapes a,b] [--dtypes float32,bfloat16] [--threads 1,2] [--rounds 3] [--repeats 20]
#       [--fixture-dir DIR] [--out DIR] [--smoke]
# Each contender COMMAND gets `--fixture F --dtype D --threads T --repeats R` appended and prints
# JSON lines like peft_cpu.py: an {"side":..,"info":{..}} line and {"side":..,"op":..,"ms":..}
# lines. It must check its outputs against the fixture F (written by PEFT) and exit nonzero when
# they do not match; such a cell is marked FAIL in the table.
# Standard library only, so the driver runs with any python3; torch lives only in the venv.
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_SCRIPT = os.path.join(REPO, "bench", "peft_cpu.py")
# Same order and names as peft_cpu.py's SHAPES.
ALL_SHAPES = ["roberta_r1024", "roberta_r256", "llama", "ffn", "batch16", "batch1"]
OP_ORDER = ["forward", "fwd_bwd_bd", "fwd_bwd_bdx", "merge", "sibling", "floor", "floor_full"]
PEER = "PEFT"


def csv_list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args():
    p = argparse.ArgumentParser(description="PEFT VeRA (CPU) against C++ contenders")
    p.add_argument("--venv", default=os.path.join(os.path.dirname(REPO), "peer-venv"),
                   help="venv made by scripts/make-peer-venv.sh (default: ../peer-venv)")
    p.add_argument("--contender", action="append", default=[], metavar="NAME=COMMAND")
    p.add_argument("--peer-only", action="store_true")
    p.add_argument("--shapes", type=csv_list, default=None, help=f"comma list of {ALL_SHAPES}")
    p.add_argument("--dtypes", type=csv_list, default=["float32", "bfloat16"])
    p.add_argument("--threads", type=lambda s: [int(t) for t in csv_list(s)], default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=None, help="peer warm-ups (peft_cpu.py: 3)")
    p.add_argument("--fixture-dir", default=None, help="default: a temporary directory")
    p.add_argument("--no-fixture-for", action="append", default=[], metavar="SHAPE",
                   help="no fixture (and so no contender run) for this shape")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    p.add_argument("--out", default=None, help="write results.jsonl and table.md here")
    p.add_argument("--smoke", action="store_true",
                   help="batch1 only, 1 thread, 1 round, 2 repeats, 1 warm-up")
    args = p.parse_args()

    if args.smoke:
        args.shapes = args.shapes or ["batch1"]
        args.threads = [1]
        args.rounds = 1
        args.repeats = 2
        args.warmup = 1 if args.warmup is None else args.warmup
    args.shapes = args.shapes or list(ALL_SHAPES)
    for s in args.shapes:
        if s not in ALL_SHAPES:
            p.error(f"unknown shape {s!r}; known: {', '.join(ALL_SHAPES)}")
    for d in args.dtypes:
        if d not in ("float32", "bfloat16"):
            p.error(f"unknown dtype {d!r}")

    contenders = []
    for spec in args.contender:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            p.error(f"--contender wants NAME=COMMAND, got {spec!r}")
        if name == PEER or name in (c[0] for c in contenders):
            p.error(f"contender name {name!r} is taken")
        contenders.append((name, shlex.split(command)))
    if not contenders and not args.peer_only:
        p.error("give at least one --contender NAME=COMMAND, or --peer-only")
    args.contenders = [] if args.peer_only else contenders
    return args


def run(cmd, timeout, threads):
    """Runs one command with `threads` threads; returns (exit code, parsed JSON lines, stderr tail)."""
    # Thread pools sized by the environment (OpenMP under oneDNN and Eigen, OpenBLAS) get the
    # cell's count too: a program that only calls omp_set_num_threads can still start pools of
    # another size, and a pool larger than the free cores stalls every parallel region.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "passive")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, parse_lines(out), f"timed out after {timeout:.0f} s"
    except OSError as e:
        return 127, [], str(e)
    return proc.returncode, parse_lines(proc.stdout), proc.stderr[-2000:]


def parse_lines(text):
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def loud(message):
    bar = "!" * 78
    print(f"\n{bar}\n{message}\n{bar}\n", file=sys.stderr, flush=True)


def fmt_ms(ms):
    if ms is None:
        return "–"
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def fmt_ratio(a, b):
    if a is None or b is None or b <= 0:
        return "–"
    return f"{a / b:.2f}×"


def main():
    args = parse_args()
    python = os.path.join(args.venv, "bin", "python")
    if not os.path.exists(python):
        sys.exit(f"no peer venv at {args.venv}: run scripts/make-peer-venv.sh {args.venv}")

    own_fixtures = args.fixture_dir is None
    fixture_dir = args.fixture_dir or tempfile.mkdtemp(prefix="vera-peft-fixtures-")
    os.makedirs(fixture_dir, exist_ok=True)
    print(f"fixtures in {fixture_dir}", file=sys.stderr)

    sides = [PEER] + [name for name, _ in args.contenders]
    times = {}  # (side, dtype, shape, threads, op) -> [per-round median ms]
    failed = {}  # (side, dtype, shape, threads) -> reason
    infos = {}  # side -> first info dict seen
    raw = []
    fixtures_written = set()

    def record(side, dtype, shape, threads, rnd, records):
        for rec in records:
            raw.append(dict(rec, round=rnd, column=side, cell_shape=shape, cell_dtype=dtype,
                            cell_threads=threads))
            if "info" in rec:
                infos.setdefault(side, rec["info"])
            elif "op" in rec and "ms" in rec:
                key = (side, dtype, shape, threads, rec["op"])
                times.setdefault(key, []).append(float(rec["ms"]))

    for rnd in range(1, args.rounds + 1):
        for threads in args.threads:
            for shape in args.shapes:
                for dtype in args.dtypes:
                    fixture = os.path.join(fixture_dir, f"{shape}_{dtype}.safetensors")
                    cmd = [python, PEER_SCRIPT, "--shape", shape, "--dtype", dtype,
                           "--threads", str(threads), "--repeats", str(args.repeats)]
                    if args.warmup is not None:
                        cmd += ["--warmup", str(args.warmup)]
                    if PEER in infos:
                        # The info probe costs seconds and says the same every time.
                        cmd.append("--no-info")
                    write = (shape, dtype) not in fixtures_written and (
                        shape not in args.no_fixture_for)
                    if write:
                        cmd += ["--fixture-dir", fixture_dir]
                    label = f"round {rnd}/{args.rounds} {shape} {dtype} threads={threads}"
                    print(f"[{label}] {PEER}", file=sys.stderr, flush=True)
                    rc, recs, err = run(cmd, args.timeout, threads)
                    record(PEER, dtype, shape, threads, rnd, recs)
                    if rc != 0:
                        failed[(PEER, dtype, shape, threads)] = f"exit {rc}"
                        loud(f"PEER (PEFT) FAILED on {label}: exit {rc}\n{err}")
                    elif write:
                        fixtures_written.add((shape, dtype))

                    for name, base_cmd in args.contenders:
                        if not os.path.exists(fixture):
                            failed[(name, dtype, shape, threads)] = "no fixture"
                            continue
                        ccmd = base_cmd + ["--fixture", fixture, "--dtype", dtype,
                                           "--threads", str(threads), "--repeats",
                                           str(args.repeats)]
                        print(f"[{label}] {name}", file=sys.stderr, flush=True)
                        rc, recs, err = run(ccmd, args.timeout, threads)
                        record(name, dtype, shape, threads, rnd, recs)
                        if rc != 0:
                            failed[(name, dtype, shape, threads)] = f"exit {rc}"
                            raw.append({"event": "mismatch", "column": name, "round": rnd,
                                        "cell_shape": shape, "cell_dtype": dtype,
                                        "cell_threads": threads, "rc": rc, "stderr": err})
                            loud(f"CONTENDER {name} FAILED on {label} (exit {rc}): its outputs "
                                 f"did not match PEFT's fixture {fixture}\n"
                                 f"command: {shlex.join(ccmd)}\n{err}")

    def med(side, dtype, shape, threads, op):
        v = times.get((side, dtype, shape, threads, op))
        return statistics.median(v) if v else None

    lines = ["# VeRA: PEFT (PyTorch, CPU) vs C++ contenders", ""]
    lines.append(f"Median over {args.rounds} round(s) of each side's median of {args.repeats} "
                 "repeats; speed-up = PEFT ms / contender ms (>1: the contender is faster).")
    lines.append("")
    for side in sides:
        if side in infos:
            lines.append(f"- **{side}** info: `{json.dumps(infos[side], sort_keys=True)}`")
    peer_info = infos.get(PEER, {})
    if peer_info:
        lines.append(f"- CPU: {peer_info.get('cpu')}; torch {peer_info.get('torch')}, "
                     f"peft {peer_info.get('peft')}; torch CPU capability "
                     f"{peer_info.get('torch_cpu_capability')}; oneDNN ISA "
                     f"{peer_info.get('onednn_isa')}")
        for dt, k in (peer_info.get("kernels") or {}).items():
            lines.append(f"- torch {dt} GEMM kernels: x@W^T {k.get('linear')}; "
                         f"g@W {k.get('mm')}")
    lines.append("")

    extra_ops = sorted({k[4] for k in times} - set(OP_ORDER))
    ops = OP_ORDER + extra_ops
    for dtype in args.dtypes:
        floor_sides = [s for s in sides if any(k[0] == s and k[1] == dtype and k[4] == "floor"
                                               for k in times)]
        header = ["shape", "threads", "op", f"{PEER} ms"]
        for name, _ in args.contenders:
            header += [f"{name} ms", f"speed-up {PEER}/{name}"]
        full_sides = [s for s in sides if any(k[0] == s and k[1] == dtype and k[4] == "floor_full"
                                              for k in times)]
        header += [f"{s}/floor (fwd_bwd_bdx)" for s in floor_sides]
        header += [f"{s}/full floor (fwd_bwd_bdx)" for s in full_sides]
        lines.append(f"## {dtype}")
        lines.append("")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
        for shape in args.shapes:
            for threads in args.threads:
                for op in ops:
                    peer_ms = med(PEER, dtype, shape, threads, op)
                    row_has = peer_ms is not None or any(
                        med(n, dtype, shape, threads, op) is not None for n, _ in args.contenders)
                    if not row_has:
                        continue
                    peer_fail = failed.get((PEER, dtype, shape, threads))
                    row = [shape, str(threads), op,
                           f"FAIL ({peer_fail})" if peer_fail else fmt_ms(peer_ms)]
                    for name, _ in args.contenders:
                        c_ms = med(name, dtype, shape, threads, op)
                        why = failed.get((name, dtype, shape, threads))
                        if why:
                            row += [f"**FAIL** ({why}) {fmt_ms(c_ms)}", "–"]
                        else:
                            row += [fmt_ms(c_ms), fmt_ratio(peer_ms, c_ms)]
                    for s, floor_op in ([(s, "floor") for s in floor_sides] +
                                        [(s, "floor_full") for s in full_sides]):
                        if op == "fwd_bwd_bdx":
                            row.append(fmt_ratio(med(s, dtype, shape, threads, op),
                                                 med(s, dtype, shape, threads, floor_op)))
                        else:
                            row.append("")
                    lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if failed:
        lines.append("## Failures")
        lines.append("")
        for (side, dtype, shape, threads), why in sorted(failed.items()):
            lines.append(f"- {side} {shape} {dtype} threads={threads}: {why}")
        lines.append("")
    table = "\n".join(lines)
    print(table)

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.jsonl"), "w") as f:
            for rec in raw:
                f.write(json.dumps(rec) + "\n")
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table + "\n")
        print(f"wrote {args.out}/results.jsonl and {args.out}/table.md", file=sys.stderr)

    if own_fixtures:
        shutil.rmtree(fixture_dir, ignore_errors=True)
    # A skipped fixture is a choice (--no-fixture-for), not a failure.
    sys.exit(1 if any(why != "no fixture" for why in failed.values()) else 0)


if __name__ == "__main__":
    main()
