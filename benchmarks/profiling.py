"""`--profile`: where the time of a train step goes, per HLO instruction for JAX (`jax.profiler` trace joined
with the HLO metadata) and per aten op for PyTorch eager (`torch.profiler`), as a markdown report."""
from __future__ import annotations

import collections
import glob
import os
import time

from benchmarks.cases import Case
from benchmarks import hlo
from benchmarks.twins import load, read_variables, train_batch
from benchmarks.workers import JaxTrainer, torch_setup


def profile_jax(case: Case, quick: bool, files: str, steps: int = 3) -> dict:
    """Per-HLO-op thunk time of jaxdiff's train step from a `jax.profiler` trace, joined with the HLO metadata."""
    import jax
    from jax.profiler import ProfileData
    config, inputs = load(files, case, quick)
    trainer = JaxTrainer(config, train_batch(inputs), read_variables(files, case))
    trainer.first_step()
    trainer.run(2)
    trace_dir = os.path.join(files, "jax-trace")
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        trainer.run(steps)
    wall = (time.perf_counter() - t0) / steps
    compiled = trainer.compiled
    instrs, comps = hlo.hlo_index(compiled.as_text())
    per_op = collections.Counter()
    for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                for ev in line.events:
                    if ev.name in instrs:
                        per_op[ev.name] += ev.duration_ns / 1e3 / steps
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    rows = [dict(op=name, category=hlo.category(instrs[name], comps), phase=hlo.phase(instrs[name]),
                 shape=instrs[name].shape[:60], us=us) for name, us in per_op.items()]
    counts = collections.Counter(op.opcode for op in instrs.values())
    return dict(rows=rows, wall_ms=wall * 1e3, flops=float(cost.get("flops", 0.0)),
                bytes=float(cost.get("bytes accessed", 0.0)), op_counts=dict(counts.most_common(12)))


def profile_torch(case: Case, quick: bool, files: str, threads: int, steps: int = 3) -> dict:
    """Self CPU time per aten op of the eager train step (torch.profiler)."""
    import torch
    torch.set_num_threads(threads)
    trainer = torch_setup(case, quick, files, "torch")[5]
    trainer.run(3)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.run(steps)
    wall = (time.perf_counter() - t0) / steps
    rows = [dict(op=e.key, us=e.self_cpu_time_total / steps, calls=e.count // steps) for e in prof.key_averages()]
    return dict(rows=rows, wall_ms=wall * 1e3)


def profile_markdown(case: Case, jx: dict, tc: dict) -> str:
    total = sum(r["us"] for r in jx["rows"]) or 1.0
    by_cat = collections.Counter()
    for r in jx["rows"]:
        by_cat[(r["category"], r["phase"])] += r["us"]
    lines = [f"## JAX train step of {case.label}", "",
             f"Wall time per step under the profiler: {jx['wall_ms']:.1f} ms; summed thunk time {total / 1e3:.1f} ms "
             f"(thunks can overlap on the {os.cpu_count()} cores). XLA cost analysis (XLA's ops; jaxdiff's native CPU "
             f"convolutions, `custom-call` rows, count none): {jx['flops'] / 1e9:.2f} GFLOP and "
             f"{jx['bytes'] / 2 ** 20:.0f} MB accessed per step ({jx['flops'] / jx['wall_ms'] / 1e6:.1f} GFLOP/s). "
             "Caveat: XLA's own (non-YNNPACK) convolutions, i.e. the weight gradients, run asynchronously and their "
             "thunks record only their launch (~0.3 ms for work that takes 5-20 ms alone, `python -m benchmarks.micro "
             "--limits`), while the ops that overlap them look slower than they are.",
             "", "| op category | phase | ms / step | share |", "|---|---|---:|---:|"]
    for (cat, phase), us in by_cat.most_common(14):
        lines.append(f"| {cat} | {phase} | {us / 1e3:.1f} | {100 * us / total:.0f}% |")
    lines += ["", "Top HLO instructions:", "", "| instruction | category | phase | output shape | ms / step |",
              "|---|---|---|---|---:|"]
    for r in sorted(jx["rows"], key=lambda r: -r["us"])[:12]:
        lines.append(f"| {r['op']} | {r['category']} | {r['phase']} | `{r['shape']}` | {r['us'] / 1e3:.2f} |")
    lines += ["", "HLO instruction counts (all computations): " +
              ", ".join(f"{k} {v}" for k, v in jx["op_counts"].items()), "",
              f"## PyTorch eager train step of {case.label}", "",
              f"Wall time per step under the profiler: {tc['wall_ms']:.1f} ms.", "",
              "| aten op | calls / step | self ms / step |", "|---|---:|---:|"]
    for r in sorted(tc["rows"], key=lambda r: -r["us"])[:14]:
        lines.append(f"| {r['op']} | {r['calls']} | {r['us'] / 1e3:.1f} |")
    conv = lambda rows, f: sum(r["us"] for r in rows if f(r)) / 1e3  # noqa: E731
    jf = conv(jx["rows"], lambda r: r["category"] == "convolution" and r["phase"] == "forward")
    jb = conv(jx["rows"], lambda r: r["category"] == "convolution" and r["phase"] == "backward")
    tf = conv(tc["rows"], lambda r: r["op"] in ("aten::mkldnn_convolution", "aten::_convolution",
                                                  "aten::_slow_conv2d_forward", "aten::thnn_conv2d"))
    tb = conv(tc["rows"], lambda r: r["op"].startswith("aten::convolution_backward")
              or "conv" in r["op"] and "backward" in r["op"])
    lines += ["", f"Convolutions, ms per step: JAX forward {jf:.1f}, backward {jb:.1f}; "
              f"PyTorch forward {tf:.1f}, backward {tb:.1f}.", ""]
    return "\n".join(lines)
