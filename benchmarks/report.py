"""The results: one row per model and framework (`make_row`, pooled over `--rounds` by `merge_rounds`), the
markdown report and table, and the `.md` / `.csv` files."""
from __future__ import annotations

import csv
import os
import platform
import re
import statistics
import sys

import numpy as np

from benchmarks.cases import (BASELINES, CASE_BY_NAME, NOT_INSTALLED, TWIN_FRAMEWORKS, Case, Sizes,
                              baseline_kwargs)
from benchmarks.memory import glibc_tunables


def machine_slug() -> str:
    """Short name of this machine: CPU model name and core count, e.g. "amd-epyc-2c"."""
    name = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1] for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    slug = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", slug).strip("-") + f"-{os.cpu_count()}c"


def make_row(case: Case, fw: str, res: dict, eager: dict, info: dict, sizes: Sizes) -> dict:
    """One CSV/table row; times are medians over the repeats. params: the row's own model (a baseline's count, ""
    if it did not run)."""
    row = dict(model=case.name, framework=fw, status=res.get("error", "ok"), train_batch=info["batch"],
               image_size=info["image_size"], params=res.get("params", "" if fw in BASELINES else info["params"]),
               ddim_steps=sizes.ddim_steps,
               sample_batch=sizes.sample_batch)
    if "error" in res:
        return row
    step = statistics.median(res["train_step_s"])
    row.update(train_steps_per_s=1.0 / step, train_step_ms=1e3 * step, first_step_s=res["first_step_s"],
               peak_memory_mb=res["peak_memory_mb"], memory_method=res["memory_method"],
               sampled_peak_mb=res["sampled_peak_mb"], rss_delta_mb=res["rss_delta_mb"], threads=res["threads"],
               page_faults_per_step=res.get("page_faults_per_step", ""), device=res.get("device", ""))
    if "train_step_s" in eager:
        row["train_speedup_vs_eager"] = statistics.median(eager["train_step_s"]) / step
        row.update(_round_range("train", res, eager))
    if "ddim_s" in res:
        row.update(ddim_latency_s=statistics.median(res["ddim_s"]), ddim_first_s=res["ddim_first_s"],
                   sample_devices=res.get("sample_devices", 1))
        if "ddim_s" in eager:
            row["ddim_speedup_vs_eager"] = statistics.median(eager["ddim_s"]) / row["ddim_latency_s"]
            row.update(_round_range("ddim", res, eager))
    return row


TIMINGS = {"train": "train_step_s", "ddim": "ddim_s"}


def merge_rounds(results: list[dict]) -> dict:
    """One framework's worker results over `--rounds`: the first round's result (first-step time, memory) with the
    timings of every round pooled, and each round's median kept under "rounds_<timing>" for per-round ratios;
    the first error if any round failed."""
    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    out = dict(results[0])
    for key in TIMINGS.values():
        if key in out:
            out[key] = [t for r in results for t in r[key]]
            out[f"rounds_{key}"] = [statistics.median(r[key]) for r in results]
    return out


def _round_range(what: str, res: dict, eager: dict) -> dict:
    """With several rounds, the speedup over torch eager as the median of the per-round ratios (each round's worker
    against the eager worker that ran next to it) and their range: {what_speedup_vs_eager, what_speedup_min,
    what_speedup_max}; {} for a single round and for eager itself."""
    key = f"rounds_{TIMINGS[what]}"
    ours, theirs = res.get(key, []), eager.get(key, [])
    if len(ours) < 2 or len(ours) != len(theirs) or res is eager:
        return {}
    ratios = [e / o for e, o in zip(theirs, ours)]
    return {f"{what}_speedup_vs_eager": statistics.median(ratios), f"{what}_speedup_min": min(ratios),
            f"{what}_speedup_max": max(ratios)}


CSV_FIELDS = ("model", "framework", "status", "train_steps_per_s", "train_step_ms", "first_step_s",
              "ddim_latency_s", "ddim_first_s", "ddim_steps", "sample_batch", "peak_memory_mb", "memory_method",
              "sampled_peak_mb", "rss_delta_mb", "train_speedup_vs_eager", "ddim_speedup_vs_eager", "train_batch",
              "image_size", "params", "threads", "page_faults_per_step", "train_speedup_min", "train_speedup_max",
              "ddim_speedup_min", "ddim_speedup_max", "sample_devices", "device")


def _fmt(x, digits: int = 3) -> str:
    """3 significant digits, no exponent for the usual range; "" for missing."""
    if x is None or x == "":
        return ""
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def markdown_table(rows: list[dict], sizes: Sizes) -> str:
    head = ["model", "framework", "train steps/s", "train step ms", "first step s",
            f"DDIM-{sizes.ddim_steps} latency s (batch {sizes.sample_batch})", "peak memory MB",
            "speedup vs torch eager (train / DDIM)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * 6]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['framework']} | n/a ({r['status']}) |  |  |  |  |  |")
            continue
        speed = " / ".join(f"{_fmt(r[f'{k}_speedup_vs_eager'])}x" + (
            f" ({_fmt(r[f'{k}_speedup_min'])}-{_fmt(r[f'{k}_speedup_max'])})" if f"{k}_speedup_min" in r else "")
            for k in ("train", "ddim") if f"{k}_speedup_vs_eager" in r)
        cells = [r["model"], r["framework"], _fmt(r["train_steps_per_s"]), _fmt(r["train_step_ms"]),
                 _fmt(r["first_step_s"]), _fmt(r.get("ddim_latency_s")), _fmt(r["peak_memory_mb"]), speed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import version
    return ", ".join(f"{p} {version(p)}" for p in ("jax", "jaxlib", "flax", "optax", "torch"))


def kernel_status() -> str:
    from jaxdiff import kernels
    if not kernels.enabled():
        return f"off (`{kernels.ENV_SWITCH}=0`): every convolution is XLA's"
    width = kernels.vector_width()
    return (f"on: float32 3x3 stride-1 convolutions as Winograd F(2x2, 3x3) (`jaxdiff/kernels`, {width}-float "
            "vectors)" if width else "unavailable (no C++ compiler or a failed build): every convolution is XLA's")


def devices(rows) -> str:
    """Where each framework ran, from the workers' results: "jax cpu, torch cpu", "jax gpu (...), torch cuda (...)"."""
    seen = {}
    for r in rows:
        if r.get("device"):
            seen.setdefault(r["framework"], r["device"])
    return ", ".join(f"{fw} {d}" for fw, d in seen.items()) or "n/a"


def render(args, rows, infos, notes, sizes, started: str, load: float, command: str) -> str:
    """The markdown report; `infos`: {case name: prepare()'s info with "batch" and "image_size"}."""
    split = sorted({r["sample_devices"] for r in rows if r["framework"] == "jax" and r.get("sample_devices")})
    lines = [f"# jaxdiff vs PyTorch on {machine_slug()}", "",
             f"- command: `{command}`", f"- date: {started}; load average at start: {load:.2f}",
             f"- CPU: {machine_slug()} ({os.cpu_count()} logical cores), Python {platform.python_version()}",
             f"- versions: {versions()}",
             f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '') or '(unset)'}`"
             f"{' (--quick: JAX timings not representative)' if args.quick else ''}; threads: PyTorch "
             f"`torch.set_num_threads({args.torch_threads})`, JAX XLA's default (all {os.cpu_count()} cores"
             + (f"; DDIM batch split over {' / '.join(map(str, split))} XLA CPU device(s), see Notes)" if split
                else ")"),
             f"- repeats: {sizes.repeats} (train: {sizes.train_steps} steps per repeat after the first step and "
             f"{sizes.warmup} warm-up steps; DDIM: one warm-up chain)"
             + (f"; rounds: {args.rounds} (each framework's worker run {args.rounds} times, frameworks alternating; "
                "times are medians over all rounds' repeats, the speedup is the median of the per-round ratios "
                "and (min-max) their range; first step and memory from round 1)" if args.rounds > 1 else ""),
             f"- GLIBC_TUNABLES (every worker, every framework): `{glibc_tunables()}`",
             f"- jaxdiff's native CPU kernels: {kernel_status()}",
             f"- devices: {devices(rows)}", "",
             markdown_table(rows, sizes), "", "Models (train batch, image size, parameters):", ""]
    for name, info in infos.items():
        own = [f"{BASELINES[r['framework']]} {r['params']:,}" for r in rows
               if r["model"] == name and r["framework"] in BASELINES and r["params"] != ""]
        lines.append(f"- {name}: {CASE_BY_NAME[name].label}; batch {info['batch']}, {info['image_size']}x"
                     f"{info['image_size']}, {info['params']:,} parameters"
                     + (f"; baselines: {', '.join(own)} parameters" if own else "")
                     + (f"; JAX with the config's xla_cpu_fusion={fusion!r}"
                        if (fusion := CASE_BY_NAME[name].config(False).get("xla_cpu_fusion")) else ""))
    lines += ["", "Notes:", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


NOTES = (
    "train step: median over the repeats of the mean step time; the batch is fixed and already in memory. JAX runs "
    "jaxdiff's shared train step (value_and_grad, optax update, EMA, non-finite guard) compiled with donated state; "
    "PyTorch does zero_grad / loss / backward / clip_grad_norm_ / step / EMA lerp with the config's optimiser.",
    "first step: wall time of the first training step including tracing and compilation (JAX: lower + compile + "
    "run; torch.compile: Dynamo + Inductor with an empty cache).",
    "peak memory of training: JAX is XLA's buffer assignment for the compiled step (arguments + outputs - donated "
    "aliases + temporaries). PyTorch is the peak of the live malloc'd bytes (glibc mallinfo2, sampled every 0.5 ms "
    "by a thread) over 2 steps minus their value before the model was built, in a fresh process: parameters, "
    "optimiser state, EMA, activations and gradients, and for torch.compile what the compiler keeps alive. The CSV's "
    "sampled_peak_mb applies the PyTorch method to JAX too (XLA:CPU's buffers are malloc'd; it adds the executable "
    "and what XLA keeps), and rss_delta_mb is the growth of the process's peak RSS over the same span, which "
    "includes the compilers' transient memory and the libraries' code pages.",
    "DDIM: deterministic (eta 0), x0 clipped to [-1, 1], the same schedule, timesteps and start noise in both "
    "frameworks; JAX runs the whole chain in one jitted lax.scan, PyTorch a Python loop under inference_mode. As "
    "`python -m jaxdiff.sample` does, the JAX worker gives XLA one CPU device per core (`jaxdiff.platform`) "
    "and splits the DDIM batch over them (the CSV's sample_devices); its train step runs on one device, whose "
    "operations use all cores, as in `python -m jaxdiff.train`.",
)


def baseline_notes(case, config, results) -> list[str]:
    """How the baselines that ran were built (constructor call) and what they share with the twin."""
    ran = [fw for fw in BASELINES if fw in results and results[fw].get("error") != NOT_INSTALLED]
    if not ran:
        return []
    channels = int(config.data.get("channels", 1))
    calls = [f"{fw}: `{BASELINES[fw].split()[-1]}(" + ", ".join(
        f"{k}={v!r}" for k, v in baseline_kwargs(fw, config.model, channels).items()) + ")`" for fw in ran]
    return [f"{case.name}: {' and '.join(ran)} are external baselines with their own random weights (no port, so no "
            "parity check and no sample comparison), run like torch (PyTorch eager, the same loss, optimiser, "
            "clipping, EMA, DDIM loop, schedule, timesteps and start noise); their speedup column is relative to "
            "the twin's torch eager. " + "; ".join(calls)]


def sample_agreement(case, files, frameworks) -> list[str]:
    ref = os.path.join(files, f"{case.name}-jax-sample.npy")
    out = []
    for fw in [f for f in frameworks if f in TWIN_FRAMEWORKS[1:]] if os.path.exists(ref) else ():
        path = os.path.join(files, f"{case.name}-{fw}-sample.npy")
        if os.path.exists(path):
            diff = float(np.max(np.abs(np.load(path) - np.load(ref))))
            out.append(f"{case.name}: DDIM samples, max |jax - {fw}| = {diff:.1e} (values in [-1, 1])")
    return out


def write(args, rows, report):
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, machine_slug() + ("-quick" if args.quick else ""))
    with open(stem + ".md", "w") as f:
        f.write(report)
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"wrote {stem}.md and {stem}.csv", file=sys.stderr)
