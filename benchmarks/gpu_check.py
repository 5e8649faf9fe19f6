"""The Python parts of the GPU check (`benchmarks/gpu_check.sh`): one train step and one DDIM chain per 2D model,
the 3D UNet's train step at 128^3 with remat (XLA's compiled peak memory against the 16 GB goal), and the
Markdown summary of every section.

  python -m benchmarks.gpu_check models  --out DIR [--dry-run]   # -> DIR/models.jsonl, one line per model
  python -m benchmarks.gpu_check brain3d --out DIR [--dry-run]   # -> DIR/brain3d.json
  python -m benchmarks.gpu_check summary --out DIR               # -> DIR/summary.md from what the sections left

Each model runs jaxdiff's production train step (`init_state`, `compile_train_step` on a one-device mesh, the
config's optimiser, precision, clipping, EMA; state donated) on the task's example batch, and its sampler
(`generate` / `upscale` / the diffusion task's DDIM chain) under `jax.jit`. A model that fails is recorded with its
error and the next one runs. `--dry-run`: tiny shapes on whatever backend JAX has (the CPU here), a subset of
the models, so that the whole script runs in under a minute.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import time
import traceback

GOAL_3D_GB = 16.0  # the 3D UNet at 128^3, batch 1, must train in less (issue 35)
DDIM_STEPS, SAMPLE_NUM = 10, 4

# (config module under configs/, overrides): the 2D models at their tiny configs (the full ones where no tiny
# config exists, at batch 2), each step at the config's batch; the most used first (a time limit keeps the rows
# already written).
MODELS = (
    ("quickstart", {}),
    ("medsegdiff_tiny", {}),
    ("transformer_unet_tiny", {}),
    ("medsegdiff_lgg", {}),
    ("unet512_seg_tiny", {}),
    ("keras_ddim_tiny", {}),
    ("classifier_tiny", {}),
    ("cascade_base64_tiny", {}),
    ("cascade_sr1_tiny", {}),
    ("cascade_sr2_tiny", {}),
    ("ddpm256", {"train.batch_size": 2}),
    ("sam_vit_b", {"train.batch_size": 2}),
)
DRY_MODELS = (("quickstart", {}),)
# 16x16 images, batch 2, narrow UNet: shapes the CPU compiles in seconds
DRY_OVERRIDES = {"data.image_size": 16, "train.batch_size": 2}
DRY_UNET = {"model.base_channels": 8, "model.channel_mults": (1, 2), "model.attention_levels": (1,), "model.groups": 4}
BRAIN3D = ("brain3d_ddpm", {"data.patch_size": 128, "train.batch_size": 1, "model.remat": ("res", "attn")})
DRY_BRAIN3D = ("brain3d_tiny", {"data.patch_size": 16, "train.batch_size": 1, "model.remat": ("res", "attn")})


def load_config(name: str, overrides: dict):
    """`configs/<name>.py`'s get_config() with dotted-key `overrides` applied (keys that the config lacks are
    skipped, so a dry-run override for one kind of model does not break another)."""
    config = importlib.import_module(f"configs.{name}").get_config()
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node.get(part) if node is not None else None
        if node is not None and leaf in node:
            node[leaf] = value
    return config


def _mb(compiled) -> dict:
    """XLA's buffer assignment of a compiled executable, MB: arguments + outputs - aliased + temporaries."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"xla_peak_mb": peak / 2 ** 20, "xla_temp_mb": m.temp_size_in_bytes / 2 ** 20,
            "xla_argument_mb": m.argument_size_in_bytes / 2 ** 20}


def train_step(config, steps: int = 3, run=lambda measured: True) -> tuple[dict, object, dict | None]:
    """Compile jaxdiff's train step for `config` on one device and, if `run(measurements so far)`, run it
    `steps` + 1 times.

    Returns (measurements, task, variables after the steps or None): params, compile_s, XLA memory, and when it
    ran first_step_s, step_ms (median), loss."""
    import jax
    import numpy as np
    from jaxdiff import tasks
    from jaxdiff.training import sharding as shd
    from jaxdiff.training.state import make_optimizer
    from jaxdiff.training.step import compile_train_step, init_state
    task = tasks.build(config)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), shd.BATCH_AXES)
    batch = jax.device_put(task.example_batch(int(config.train.batch_size)), shd.batch_sharding(mesh))
    state, shardings = init_state(task, make_optimizer(config.train), jax.random.key(0), batch, mesh)
    out = {"params": int(sum(x.size for x in jax.tree.leaves(state.params)))}
    t0 = time.perf_counter()
    compiled = compile_train_step(task, config.train, mesh, shardings).lower(state, batch, jax.random.key(1)).compile()
    out.update(compile_s=time.perf_counter() - t0, **_mb(compiled))
    if not run(out):
        return out, task, None
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, jax.random.key(1))
    jax.block_until_ready(metrics)
    out["first_step_s"] = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, jax.random.key(2 + i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    out.update(step_ms=1e3 * statistics.median(times), loss=float(metrics["loss"]))
    variables = {"params": state.ema_params if getattr(state, "ema_params", None) is not None else state.params,
                 **(state.model_state or {})}
    return out, task, variables


def sample(task, variables, config, num: int, steps: int) -> dict:
    """One sampler call (compile + run), then a second (run): ddim_first_s, ddim_s, what ran. {} if the task has
    no sampler (a classifier, a segmenter)."""
    import jax
    import numpy as np
    rng = jax.random.key(3)
    if hasattr(task, "upscale") and hasattr(task, "low_res_shape"):
        low = np.zeros((num, *task.low_res_shape()), np.float32)
        call, what = (lambda: task.upscale(variables, low, rng, num_steps=steps)), "upscale"
    elif hasattr(task, "generate") and config.task == "generation":
        call, what = (lambda: task.generate(variables, num, rng, num_steps=steps)), "generate"
    elif hasattr(task, "jitted_sample"):  # a conditional diffusion task: the DDIM chain on the example condition
        (x, _, cond), _ = task.model_inputs(task.example_batch(num))
        call, what = (lambda: task.jitted_sample(variables, tuple(x.shape), rng, cond=cond, num_steps=steps)), \
            "DDIM chain"
    else:
        return {}
    out = {"sampler": f"{what}, {steps} steps, batch {num}"}
    for key in ("ddim_first_s", "ddim_s"):
        t0 = time.perf_counter()
        result = call()
        jax.block_until_ready(result)
        out[key] = time.perf_counter() - t0
    leaves = [np.asarray(x) for x in jax.tree.leaves(result) if hasattr(x, "dtype") and x.dtype.kind == "f"]
    out["sample_finite"] = bool(leaves) and all(np.isfinite(x).all() for x in leaves)
    return out


def models(out_dir: str, dry_run: bool) -> int:
    """One train step and one sampler call per 2D model -> out_dir/models.jsonl (a line as each model ends)."""
    import jax
    path, failed = os.path.join(out_dir, "models.jsonl"), 0
    open(path, "w").close()
    for name, overrides in DRY_MODELS if dry_run else MODELS:
        row, t0 = {"config": name, "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in overrides.items()}}, time.perf_counter()
        try:
            config = load_config(name, {**overrides, **DRY_OVERRIDES, **DRY_UNET} if dry_run else overrides)
            row.update(task=config.task, batch=int(config.train.batch_size), image_size=str(config.data.image_size),
                       precision=config.train.get("precision", "fp32"), backend=jax.default_backend())
            measured, task, variables = train_step(config, steps=1 if dry_run else 3)
            row.update(measured)
            row.update(sample(task, variables, config, 2 if dry_run else SAMPLE_NUM, 2 if dry_run else DDIM_STEPS))
            row["status"] = "ok"
        except Exception as e:  # recorded, and the next model runs
            failed += 1
            row["status"] = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e) else ''}"
            traceback.print_exc()
        row["wall_s"] = time.perf_counter() - t0
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: {row['status']} ({row['wall_s']:.0f} s)", flush=True)
    return 1 if failed else 0


def brain3d(out_dir: str, dry_run: bool) -> int:
    """The 3D UNet's train step at 128^3 with remat: XLA's compiled peak memory against GOAL_3D_GB, then (if it
    fits the device) the step time -> out_dir/brain3d.json."""
    import jax
    name, overrides = DRY_BRAIN3D if dry_run else BRAIN3D
    row = {"config": name, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}
    try:
        config = load_config(name, overrides)
        row.update(patch=int(config.data.patch_size), batch=int(config.train.batch_size),
                   remat=list(config.model.get("remat") or ()), precision=config.train.get("precision", "fp32"),
                   backend=jax.default_backend(), device=str(jax.devices()[0].device_kind))
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
        fits = lambda m: limit is None or m.get("xla_peak_mb", 0) * 2 ** 20 < limit  # noqa: E731  run if it fits
        measured, _, _ = train_step(config, steps=1 if dry_run else 2, run=fits)
        row.update(measured)
        peak_gb = row.get("xla_peak_mb", float("nan")) / 1024
        row.update(xla_peak_gb=peak_gb, goal_gb=GOAL_3D_GB, meets_goal=bool(peak_gb < GOAL_3D_GB))
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            row["device_peak_gb"] = stats["peak_bytes_in_use"] / 2 ** 30
        row["status"] = "ok"
    except Exception as e:
        row["status"] = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e) else ''}"
        traceback.print_exc()
    with open(os.path.join(out_dir, "brain3d.json"), "w") as f:
        json.dump(row, f)
    print(f"{name}: {row['status']}", flush=True)
    return 0 if row["status"] == "ok" else 1


# --- the summary -------------------------------------------------------------------------------------------------

SECTIONS = ("Environment", "Parity tests", "Train step and DDIM per 2D model", "3D UNet at 128^3 with remat",
            "Benchmark against PyTorch")


def _fmt(x, digits: int = 3) -> str:
    if x is None or x == "":
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
    return str(x)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _status(out_dir: str, section: str) -> str:
    """The shell script's record of a section: "ok", "FAILED (exit N)", "TIMEOUT after N s", "skipped: why"."""
    return _read(os.path.join(out_dir, "status", section.replace(" ", "_") + ".txt")).strip() or "not run"


def _models_table(out_dir: str) -> list[str]:
    rows = [json.loads(line) for line in _read(os.path.join(out_dir, "models.jsonl")).splitlines() if line.strip()]
    if not rows:
        return ["(no model ran)"]
    lines = ["| config | task | batch | image | precision | params | compile s | step ms | XLA peak MB | sampler |"
             " sampler first s | sampler s | status |", "|---|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in (
            "config", "task", "batch", "image_size", "precision", "params", "compile_s", "step_ms", "xla_peak_mb",
            "sampler", "ddim_first_s", "ddim_s", "status")) + " |")
    over = [f"{r['config']}: {r['overrides']}" for r in rows if r.get("overrides")]
    dry = os.path.exists(os.path.join(out_dir, "DRY_RUN"))
    missed = [name for name, _ in (DRY_MODELS if dry else MODELS) if name not in {r["config"] for r in rows}]
    return (lines + (["", f"Overrides: {'; '.join(over)}."] if over else [])
            + (["", f"Not reached (the section's time limit): {', '.join(missed)}."] if missed else []))


def _brain3d_lines(out_dir: str) -> list[str]:
    text = _read(os.path.join(out_dir, "brain3d.json"))
    if not text:
        return ["(did not run)"]
    r = json.loads(text)
    verdict = ("meets" if r.get("meets_goal") else "misses") + f" the < {_fmt(r.get('goal_gb'))} GB goal"
    lines = [f"- config: `configs/{r['config']}.py`, overrides {r.get('overrides')}; status: {r['status']}"]
    if "xla_peak_gb" in r:
        lines += [f"- {r.get('patch')}^3 patch, batch {r.get('batch')}, remat {r.get('remat')}, {r.get('precision')}, "
                  f"{r.get('params', 0):,} parameters, on {r.get('backend')} ({r.get('device')})",
                  f"- XLA compiled peak (arguments + outputs - aliased + temporaries): **{r['xla_peak_gb']:.2f} GB**,"
                  f" {verdict}; temporaries {_fmt(r.get('xla_temp_mb'))} MB; compile {_fmt(r.get('compile_s'))} s"]
    if "step_ms" in r:
        lines.append(f"- train step {_fmt(r['step_ms'])} ms (first step {_fmt(r.get('first_step_s'))} s), loss "
                     f"{_fmt(r.get('loss'))}" + (f"; device peak in use {r['device_peak_gb']:.2f} GB"
                                                  if "device_peak_gb" in r else ""))
    return lines


def summary(out_dir: str) -> str:
    """DIR/summary.md: one section per part of the check, each with its status, ready to paste into
    benchmarks/PERFORMANCE.md."""
    dry = os.path.exists(os.path.join(out_dir, "DRY_RUN"))
    parts = [f"## GPU check{' (dry run on the CPU, tiny shapes)' if dry else ''}: "
             f"{_read(os.path.join(out_dir, 'started.txt')).strip()}", "",
             f"Command: `{_read(os.path.join(out_dir, 'command.txt')).strip()}`; results folder `{out_dir}`.", ""]
    body = {
        "Environment": [f"Install of the wheels (benchmarks/gpu_check_requirements.txt): {_status(out_dir, 'Install')}",
                        "", "```", _read(os.path.join(out_dir, "environment.txt")).strip(), "```"],
        "Parity tests": ["```", "\n".join(_read(os.path.join(out_dir, "parity.log")).strip().splitlines()[-8:]),
                         "```"],
        "Train step and DDIM per 2D model": _models_table(out_dir),
        "3D UNet at 128^3 with remat": _brain3d_lines(out_dir),
        "Benchmark against PyTorch": [_benchmark_table(out_dir)],
    }
    for section in SECTIONS:
        parts += [f"### {section}", "", f"Status: {_status(out_dir, section)}", "", *body[section], ""]
    text = "\n".join(parts)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    return text


def _benchmark_table(out_dir: str) -> str:
    """The tables of `python -m benchmarks.run`'s reports (one per case, bench/<case>/*.md) with their command,
    date, versions and devices."""
    import glob
    reports = sorted(glob.glob(os.path.join(out_dir, "bench", "*", "*.md")))
    parts = []
    for report in reports:
        lines = _read(report).splitlines()
        head = [ln for ln in lines if ln.startswith("- ") and ln.split(":")[0] in (
            "- command", "- versions", "- devices", "- date")]
        table = [ln for ln in lines if ln.startswith("|")]
        parts.append("\n".join(head + [""] + table + ["", f"Full report: `{report}`."]))
    return "\n\n".join(parts) or "(no report)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("models", "brain3d", "summary"))
    p.add_argument("--out", required=True, help="the results folder of benchmarks/gpu_check.sh")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes and a subset of the models (CPU, < 1 min)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.part == "summary":
        print(summary(args.out))
        return 0
    return (models if args.part == "models" else brain3d)(args.out, args.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
