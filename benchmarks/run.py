"""Side-by-side benchmark of jaxdiff against its PyTorch twins: `python -m benchmarks.run`.

Per model pair, both sides are built from the SAME config `model` block (JAX through `jaxdiff.tasks.build(config)`,
PyTorch through `from_jax_config`); the torch weights are ported into JAX with `benchmarks.port` and the two forward
passes are checked to agree, so both frameworks compute the same function. Then, each in a fresh subprocess (own
thread pools and memory), one after the other:

  jax            jaxdiff's shared train step (`compile_train_step` on a 1-device mesh, the config's optimiser,
                 clipping, EMA and non-finite guard) and `samplers.ddim_sample` under `jax.jit`;
  torch          PyTorch eager: the same loss, the config's Adam(W), clipping and EMA, zero_grad/backward/step;
                 a Python DDIM loop over the same schedule, timesteps and start noise;
  torch.compile  the same with `torch.compile(model)` (the model only; a cold Inductor cache per model);
  monai          (unet2d only) the external baselines a user would pick instead, MONAI's DiffusionModelUNet and
  diffusers      diffusers' UNet2DModel configured like jaxdiff's UNet (`baseline_kwargs`), their own random
                 weights, through the PyTorch eager trainer and DDIM loop above (requirements-bench.txt).

Measured: train step time (median over `--repeats` runs of several steps, after warm-up; data loading excluded),
first step (trace + compile + run), DDIM latency for one batch (median of `--repeats` chains after a warm-up
chain), peak memory of training (JAX: `compiled.memory_analysis()`, arguments + outputs - aliased + temporaries;
PyTorch: peak of the live malloc'd bytes over two steps, sampled by a thread, minus their value before the model
was built, in a fresh process).
Threads: PyTorch `torch.set_num_threads(--torch-threads)` (default: all cores); JAX uses XLA's default (all cores).

  python -m benchmarks.run                      full run -> benchmarks/results/<machine>.md and .csv
  python -m benchmarks.run --quick --out DIR    tiny sizes: jax, torch eager, baselines -> <machine>-quick.*
  python -m benchmarks.run --full               also the TransUNet-style segmenter at full size (240x240, batch 2)
  python -m benchmarks.run --profile            op-level profile of the 2D UNet train step, JAX and torch eager
  python -m benchmarks.run --device cuda        the PyTorch workers on the GPU (default auto: cuda if available)

This module is the command line and the orchestration (one fresh process per worker, `--rounds`); the parts live
beside it: `cases` (what is benchmarked), `twins` (PyTorch twin, weight port, shared inputs), `workers` (the JAX and
PyTorch workers), `memory` (RSS, malloc'd bytes, XLA's buffer assignment), `hlo` and `profiling` (`--profile`),
`report` (rows, tables, the .md and .csv files).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks.cases import (BASELINES, CASE_ALIASES, CASE_BY_NAME, CASES, FRAMEWORKS, NOT_INSTALLED,
                              TWIN_FRAMEWORKS, Case, Sizes, baseline_kwargs)
from benchmarks.memory import glibc_tunables
from benchmarks.profiling import profile_jax, profile_markdown, profile_torch
from benchmarks.report import (CSV_FIELDS, NOTES, baseline_notes, machine_slug, make_row, markdown_table,
                               merge_rounds, render, sample_agreement, versions, write)
from benchmarks.twins import prepare
from benchmarks.workers import jax_worker, torch_worker
from jaxdiff import platform

__all__ = ["BASELINES", "CASES", "CASE_BY_NAME", "CSV_FIELDS", "FRAMEWORKS", "Sizes", "baseline_kwargs",
           "main", "markdown_table", "merge_rounds", "parse_args", "run_all", "run_profile"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# --quick only: XLA:CPU's LLVM optimisation costs most of the compile time (the tiny models still compile ~1700
# fusions); the smoke run skips it, so its JAX timings are not representative.
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0"
_row = make_row  # the name tests/test_benchmark_smoke.py uses


def _worker_cmd(args, role: str, case: Case, files: str) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.run", "--worker", role, "--case", case.name, "--files", files,
           "--torch-threads", str(args.torch_threads), "--device", args.device]
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    return cmd + (["--quick"] if args.quick else [])


def run_framework(args, fw: str, case: Case, files: str) -> dict:
    """`run_worker` of framework `fw`; {"error": NOT_INSTALLED} for a baseline whose package is missing."""
    if fw in BASELINES and importlib.util.find_spec(fw) is None:
        return {"error": NOT_INSTALLED}
    return run_worker(args, fw, case, files)


def run_worker(args, role: str, case: Case, files: str) -> dict:
    """Run one worker in a fresh process (its own session, so a timeout also ends Inductor's compile workers);
    {"error": reason} if it fails or times out."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TORCHINDUCTOR_CACHE_DIR=os.path.join(files, f"inductor-{case.name}"), GLIBC_TUNABLES=glibc_tunables())
    result = os.path.join(files, f"{case.name}-{role}.json")
    t0 = time.perf_counter()
    with subprocess.Popen(_worker_cmd(args, role, case, files) + ["--result", result], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            _, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"error": f"timeout after {args.timeout} s"}
    print(f"{case.name} {role}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if proc.returncode != 0 or not os.path.exists(result):
        tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:160]}"}
    with open(result) as f:
        return json.load(f)


def run_all(args) -> str:
    sizes = Sizes.of(args.quick, args.repeats)
    cases = [CASE_BY_NAME[n] for n in args.cases] if args.cases else \
        [c for c in CASES if args.full or not c.full_only]
    frameworks = args.frameworks or (("jax", "torch", *BASELINES) if args.quick else FRAMEWORKS)
    load = os.getloadavg()[0]
    if load > 1.5:
        print(f"warning: load average {load:.2f} > 1.5, timings will be noisy", file=sys.stderr)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    rows, notes, infos = [], list(NOTES), {}
    with tempfile.TemporaryDirectory(prefix="jaxdiff-bench-") as files:
        for case in cases:
            config, t0 = case.config(args.quick), time.perf_counter()
            info = infos[case.name] = dict(prepare(case, args.quick, sizes, files),
                                           batch=int(config.train.batch_size), image_size=int(config.data.image_size))
            print(f"{case.name} prepare: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            notes.append(f"{case.name}: eval forward pass, ported weights, max |jax - torch| / max |torch| = "
                         f"{info['parity']:.1e}")
            ran = [fw for fw in frameworks if fw in TWIN_FRAMEWORKS or case.baselines]
            rounds = [{fw: run_framework(args, fw, case, files) for fw in ran} for _ in range(args.rounds)]
            results = {fw: merge_rounds([r[fw] for r in rounds]) for fw in ran}
            rows += [make_row(case, fw, res, results.get("torch", {}), info, sizes) for fw, res in results.items()]
            notes += sample_agreement(case, files, frameworks) + baseline_notes(case, config, results)
    if "torch.compile" not in frameworks:
        why = "--quick skips it" if args.quick else "not in --frameworks"
        notes.append(f"torch.compile: not run ({why}: a cold Inductor compile takes minutes on this CPU; "
                     "add --frameworks jax torch torch.compile).")
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = render(args, rows, infos, notes, sizes, started, load, command.strip())
    write(args, rows, report)
    return report


def run_profile(args) -> str:
    """Profile the train step of each case of --cases (default the 2D UNet) in both frameworks.

    Writes <machine>-profile.md for the 2D UNet and <machine>-profile-<case>.md for the others."""
    reports, sizes = [], Sizes.of(args.quick, args.repeats)
    for name in args.cases or ["unet2d"]:
        case = CASE_BY_NAME[name]
        with tempfile.TemporaryDirectory(prefix="jaxdiff-profile-") as files:
            prepare(case, args.quick, sizes, files)
            jx, tc = (run_worker(args, role, case, files) for role in ("profile-jax", "profile-torch"))
        for res in (jx, tc):
            if "error" in res:
                raise SystemExit(f"profile of {name} failed: {res['error']}")
        config = case.config(args.quick)
        cases_flag = "" if name == "unet2d" else f" --cases {name}"
        report = (f"# Where the time goes: {case.label} train step on {machine_slug()}\n\n"
                  f"Command: `python -m benchmarks.run --profile{cases_flag}{' --quick' if args.quick else ''}`; "
                  f"batch {config.train.batch_size}, {config.data.image_size}x{config.data.image_size}; "
                  f"{versions()}\n\n" + profile_markdown(case, jx, tc))
        os.makedirs(args.out, exist_ok=True)
        stem = machine_slug() + ("-quick" if args.quick else "") + "-profile" + ("" if name == "unet2d" else f"-{name}")
        path = os.path.join(args.out, stem + ".md")
        with open(path, "w") as f:
            f.write(report)
        print(f"wrote {path}", file=sys.stderr)
        reports.append(report)
    return "\n".join(reports)


def worker_main(args) -> None:
    case, sizes = CASE_BY_NAME[args.case], Sizes.of(args.quick, args.repeats)
    role = args.worker
    if role in ("jax", "profile-jax"):  # as the entry points do, before JAX starts (`sample`'s CPU devices for "jax")
        platform.setup(case.config(args.quick), reexec=False, compilation_cache=False,
                       cpu_devices=platform.DEFAULT_CPU_DEVICES if role == "jax" else None)
    try:
        if role == "jax":
            res = jax_worker(case, args.quick, sizes, args.files)
        elif role in FRAMEWORKS:
            res = torch_worker(case, args.quick, sizes, args.files, role, args.torch_threads, args.device)
        elif role == "profile-jax":
            res = profile_jax(case, args.quick, args.files)
        else:
            res = profile_torch(case, args.quick, args.files, args.torch_threads)
    except Exception as e:  # reported as "n/a (reason)" in the table, e.g. a torch.compile failure
        msg = str(e).strip().splitlines()
        res = {"error": f"{type(e).__name__}: {msg[0][:150] if msg else ''}"}
    with open(args.result, "w") as f:
        json.dump(res, f)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (16x16, batch 2, DDIM-5), jax, torch eager and the baselines (monai, diffusers)")
    p.add_argument("--full", action="store_true", help="also the TransUNet-style segmenter at full size")
    p.add_argument("--profile", action="store_true",
                   help="op-level profile of the train step of --cases (default unet2d), JAX and torch eager")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"), help="results directory")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, --quick 2)")
    p.add_argument("--cases", nargs="+", choices=sorted(CASE_BY_NAME) + sorted(CASE_ALIASES),
                   help="only these models (" + ", ".join(f"{a} is {n}" for a, n in CASE_ALIASES.items()) + ")")
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, help="only these frameworks (jax first)")
    p.add_argument("--torch-threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the PyTorch workers run (auto: cuda when PyTorch sees a GPU, else cpu); JAX runs on "
                        "its default backend")
    p.add_argument("--timeout", type=int, default=600, help="seconds per worker process")
    p.add_argument("--rounds", type=int, default=1,
                   help="run each framework's worker this many times, frameworks alternating, so that a shared "
                        "machine's slow drift hits all alike; the table adds each speedup's per-round range")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    for old in set(args.cases or ()) & set(CASE_ALIASES):
        print(f"note: --cases {old} is now called {CASE_ALIASES[old]}", file=sys.stderr)
    args.cases = [CASE_ALIASES.get(n, n) for n in args.cases] if args.cases else args.cases
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.quick and not args.worker:  # this process (the parity check) and every worker inherit it
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_XLA_FLAGS}".strip()
    if not args.worker:  # on a GPU the parent's parity check must not reserve the memory the workers measure
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        platform.add_cpu_xla_flags()  # the parity check and the workers under the CLIs' XLA:CPU flags
    if args.worker:
        worker_main(args)
    else:
        print(run_profile(args) if args.profile else run_all(args))


if __name__ == "__main__":
    main()
