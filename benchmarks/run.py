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
  python -m benchmarks.run --full               also S0 at full size (240x240, batch 2)
  python -m benchmarks.run --profile            op-level profile of the 2D UNet train step, JAX and torch eager
"""
from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import contextlib
import ctypes
import datetime
import functools
import glob
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

import ml_collections
import numpy as np

import jaxdiff
from configs import medsegdiff_seed, medsegdiff_tiny, quickstart, transformer_unet_brats, transformer_unet_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWIN_FRAMEWORKS = ("jax", "torch", "torch.compile")  # jaxdiff's model and its PyTorch twin with ported weights
BASELINES = {"monai": "MONAI DiffusionModelUNet", "diffusers": "diffusers UNet2DModel"}  # own weights, eager
FRAMEWORKS = TWIN_FRAMEWORKS + tuple(BASELINES)
NOT_INSTALLED = "not installed: pip install -r requirements-bench.txt"
QUICK_SIZE, QUICK_BATCH = 16, 2  # image side and train batch of --quick
# --quick only: XLA:CPU's LLVM optimisation costs most of the compile time (the tiny models still compile ~1700
# fusions); the smoke run skips it, so its JAX timings are not representative.
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0"


# --- what is benchmarked --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One model pair. `config(quick) -> jaxdiff config`; the PyTorch twin is built from its `model` block.
    `baselines`: also run MONAI's and diffusers' UNets configured like the `model` block (a 2D diffusion UNet)."""

    name: str
    label: str
    config: Callable[[bool], ml_collections.ConfigDict]
    full_only: bool = False
    baselines: bool = False

    def is_diffusion(self, quick: bool) -> bool:
        return self.config(quick).task != "segmentation"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Run lengths: train steps per timed repeat, warm-up steps after the first, DDIM chain and batch."""

    repeats: int
    train_steps: int
    warmup: int
    ddim_steps: int
    sample_batch: int

    @classmethod
    def of(cls, quick: bool, repeats: int | None) -> "Sizes":
        if quick:
            return cls(repeats or 2, train_steps=2, warmup=1, ddim_steps=5, sample_batch=2)
        return cls(repeats or 5, train_steps=3, warmup=1, ddim_steps=50, sample_batch=4)


def _shrink(c, **model):
    """--quick: QUICK_SIZE images, batch QUICK_BATCH, narrower model (`model` overrides)."""
    c.data.image_size, c.train.batch_size = QUICK_SIZE, QUICK_BATCH
    c.model.update(model)
    return c


def _unet(quick):
    c = quickstart.get_config()
    return _shrink(c, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), groups=4) if quick else c


def _medsegdiff(base):
    def make(quick):
        c = base.get_config()
        return _shrink(c, image_size=QUICK_SIZE, first_conv_channels=8) if quick else c
    return make


def _s0(base, batch=None):
    def make(quick):
        c = base.get_config()
        c.train.batch_size = batch or c.train.batch_size
        return _shrink(c, widths=(4, 8, 8, 16, 16), ff_dim=32) if quick else c
    return make


CASES = (
    Case("unet2d", "diffusion UNet 2D (configs/quickstart.py, 64x64)", _unet, baselines=True),
    Case("medsegdiff_seed", "MedSegDiff seed S1 (configs/medsegdiff_seed.py, 32x32)", _medsegdiff(medsegdiff_seed)),
    Case("medsegdiff_tiny", "MedSegDiff main job (configs/medsegdiff_tiny.py, 32x32)", _medsegdiff(medsegdiff_tiny)),
    Case("s0_tiny", "S0 TransformerUNet narrow (configs/transformer_unet_tiny.py, 64x64)", _s0(transformer_unet_tiny)),
    Case("s0_full", "S0 TransformerUNet full size (configs/transformer_unet_brats.py, 240x240)",
         _s0(transformer_unet_brats, batch=2), full_only=True),
)
CASE_BY_NAME = {c.name: c for c in CASES}


# --- external baselines (cases with `baselines`): MONAI and diffusers UNets configured like jaxdiff's -------------

def baseline_kwargs(name: str, model, channels: int = 1) -> dict:
    """Constructor arguments of baseline `name` ("monai": `monai.networks.nets.DiffusionModelUNet`, "diffusers":
    `diffusers.UNet2DModel`) matching jaxdiff's 2D UNet `model` block, for `channels` input and output channels.

    Matched: level widths base_channels * channel_mults, num_res_blocks ResBlocks per encoder level (one more per
    decoder level), attention after each ResBlock of the `attention_levels` and in the middle block (ResBlock,
    attention, ResBlock), heads of C // num_heads (or head_channels) channels, GroupNorm(groups) with eps 1e-5, a
    sinusoid of base_channels entries into a 4 * base_channels time MLP, strided-conv downsampling and nearest + conv
    upsampling, SDPA attention (MONAI's switched to it, with a fused qkv projection as jaxdiff's). Not matched: MONAI
    adds the time embedding in the ResBlock (its only option; jaxdiff and diffusers here use scale-shift FiLM) and
    has no ResBlock dropout; diffusers takes one head width for every level (the deepest level's) and computes q, k,
    v with three linears.
    """
    widths = tuple(int(model.base_channels) * int(m) for m in model.channel_mults)
    attention = tuple(level in tuple(model.attention_levels) for level in range(len(widths)))
    heads = tuple(int(model.get("head_channels", 0)) or w // int(model.num_heads) for w in widths)
    common = dict(in_channels=channels, out_channels=int(model.get("out_channels") or channels), norm_eps=1e-5)
    if name == "monai":
        return dict(common, spatial_dims=2, channels=widths, attention_levels=attention,
                    num_res_blocks=int(model.num_res_blocks), num_head_channels=heads,
                    norm_num_groups=int(model.groups), use_combined_linear=True, use_flash_attention=True)
    return dict(common, block_out_channels=widths, layers_per_block=int(model.num_res_blocks),
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
                attention_head_dim=heads[-1], norm_num_groups=int(model.groups),
                attn_norm_num_groups=int(model.groups), resnet_time_scale_shift="scale_shift",
                flip_sin_to_cos=False, freq_shift=0, dropout=float(model.get("dropout", 0.0)))


def baseline_net(name: str, model, channels: int = 1):
    """(the baseline torch module with its own random init, adapter `net(x, t, cond) -> eps`): x (B, C, H, W)
    float32, t (B,) int64, cond None (the baselines run unconditional generation only)."""
    if name == "monai":
        from monai.networks.nets import DiffusionModelUNet as cls
    else:
        from diffusers import UNet2DModel as cls
    module = cls(**baseline_kwargs(name, model, channels))

    def net(x, t, cond=None):
        if cond:
            raise ValueError(f"the {name} baseline is unconditional, got cond keys {sorted(cond)}")
        return module(x, t) if name == "monai" else module(x, t, return_dict=False)[0]
    return module, net


# --- shared inputs: written once by the parent, read by every worker --------------------------------------------

def _inputs_path(files, case):
    return os.path.join(files, f"{case.name}-inputs.npz")


def _make_inputs(config, sizes: Sizes, alphas_cumprod, ddim_ts) -> dict:
    """Deterministic NHWC numpy inputs: the train batch, DDIM start noise / condition, schedule, timesteps."""
    rng = np.random.default_rng(0)
    s, b, c = int(config.data.image_size), int(config.train.batch_size), int(config.data.get("channels", 1))
    out = {"image": rng.uniform(-1, 1, (b, s, s, c)).astype(np.float32)}
    if config.task != "generation":
        out["mask"] = (rng.random((b, s, s, 1)) > 0.7).astype(np.float32)
    out["x_T"] = rng.normal(size=(sizes.sample_batch, s, s, 1)).astype(np.float32)
    out["cond_image"] = rng.uniform(-1, 1, (sizes.sample_batch, s, s, c)).astype(np.float32)
    out["alphas_cumprod"] = np.asarray(alphas_cumprod, np.float32)
    out["ddim_ts"] = np.asarray(ddim_ts, np.int64)
    return out


def _batch(inputs: dict) -> dict:
    return {k: inputs[k] for k in ("image", "mask") if k in inputs}


def _torch_modules(config):
    """The PyTorch twin of the config's model (a ModuleDict: "net", and "vae" for S0's error head)."""
    import torch
    from benchmarks.torch_models import medsegdiff, transformer_unet, unet
    name = config.model.name
    if name == "unet":
        mods = {"net": unet.UNet.from_jax_config(config.model)}
    elif name == "medsegdiff":
        mods = {"net": medsegdiff.MedSegDiff.from_jax_config(config.model)}
    else:
        mods = {"net": transformer_unet.TransformerUNet.from_jax_config(config.model),
                "vae": transformer_unet.ErrorVAE.from_jax_config(config.error_head)}
    return torch.nn.ModuleDict(mods)


def _port(modules) -> dict:
    """Flax variables of the task's model from the torch twin (S0: segmenter + error head, as the task nests them)."""
    from benchmarks import port
    from benchmarks.torch_models import medsegdiff, unet
    net = modules["net"]
    if "vae" in modules:
        params, stats = port.port_transformer_unet(net)
        return {"params": {"segmenter": params, "error_head": port.port_error_vae(modules["vae"])},
                "batch_stats": {"segmenter": stats}}
    if isinstance(net, unet.UNet):
        return {"params": port.port_unet(net)}
    assert isinstance(net, medsegdiff.MedSegDiff)
    return {"params": port.port_medsegdiff(net)}


def _perturb(modules, seed: int = 0):
    """Add N(0, 0.02^2) noise to every weight: zero-initialised output layers would make the forward pass (and the
    parity check and DDIM comparison) trivially zero. Timings do not depend on the values."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in modules.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))


def _to_torch(x):
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _to_nhwc(t):
    return np.moveaxis(t.detach().float().numpy(), 1, -1)


def prepare(case: Case, quick: bool, sizes: Sizes, files: str) -> dict:
    """Build the torch twin, port it to JAX, check the forward passes agree (eval mode) and write the shared files.

    Returns {"params": N, "parity": max |jax - torch| / max |torch| of the eval forward pass}.
    """
    import jax
    import torch
    from flax import serialization
    from jaxdiff import tasks
    from jaxdiff.diffusion import samplers
    config = case.config(quick)
    task = tasks.build(config)
    torch.manual_seed(0)
    modules = _torch_modules(config)
    _perturb(modules)
    variables = _port(modules)
    schedule = getattr(task, "schedule", None)  # None for S0 (not a diffusion model)
    ts = samplers.ddim_timesteps(schedule.num_timesteps, sizes.ddim_steps)[::-1] if schedule else []
    inputs = _make_inputs(config, sizes, schedule.alphas_cumprod if schedule else [], ts)
    np.savez(_inputs_path(files, case), **inputs)
    torch.save(modules.state_dict(), os.path.join(files, f"{case.name}.pt"))
    with open(os.path.join(files, f"{case.name}.msgpack"), "wb") as f:
        f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))
    ours, theirs = _eval_outputs(task, variables, modules.eval(), inputs)
    return {"params": sum(p.numel() for p in modules["net"].parameters()),
            "parity": float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-12))}


def _eval_outputs(task, variables, modules, inputs) -> tuple[np.ndarray, np.ndarray]:
    """(JAX output, torch output), NHWC numpy, of the eval forward pass on the train batch."""
    import jax
    import torch
    batch = _batch(inputs)
    with torch.no_grad():
        if "vae" in modules:
            ours = jax.jit(lambda v: task.apply(v, batch["image"], batch["mask"])[0])(variables)
            return np.asarray(ours), _to_nhwc(modules["net"](_to_torch(batch["image"])))
        x0 = batch["mask"] * 2 - 1 if "mask" in batch else batch["image"]
        t = np.linspace(0, len(inputs["alphas_cumprod"]) - 1, len(x0)).astype(np.int32)
        cond = {"image": batch["image"]} if "mask" in batch else None
        ours = jax.jit(lambda v: task.apply(v, x0, t, cond))(variables)
        t_cond = {"image": _to_torch(batch["image"])} if cond else None
        return np.asarray(ours), _to_nhwc(modules["net"](_to_torch(x0), torch.from_numpy(t).long(), t_cond))


# --- measurement helpers ----------------------------------------------------------------------------------------

def _maxrss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb() -> float:
    """Current resident set size of this process (VmRSS in /proc/self/status), MB; the peak where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
    except (OSError, StopIteration):
        return _maxrss_mb()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                 "uordblks", "fordblks", "keepcost")]


def _malloc_live_mb() -> float:
    """Bytes currently allocated through malloc (glibc `mallinfo2`: in-use heap chunks + mmapped chunks), MB.
    PyTorch's CPU tensors and XLA:CPU's buffers are both malloc'd."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2 ** 20


def _baseline() -> dict:
    """Memory of the process before the model is built: current RSS and live malloc'd bytes, MB."""
    return {"rss": _rss_mb(), "live": _malloc_live_mb()}


@contextlib.contextmanager
def sampled_peak(period_s: float = 5e-4):
    """Peak of the live malloc'd bytes over a block, sampled by a thread every `period_s` seconds.

    Yields a dict holding "peak_mb" after the block. Unlike RSS this ignores memory the allocator keeps after a
    free and the libraries' code; peaks shorter than the period can be missed.
    """
    box, stop = {"peak_mb": _malloc_live_mb()}, threading.Event()

    def sample():
        while not stop.is_set():
            box["peak_mb"] = max(box["peak_mb"], _malloc_live_mb())
            stop.wait(period_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()
        box["peak_mb"] = max(box["peak_mb"], _malloc_live_mb())


def _time_calls(fn: Callable[[], None], repeats: int, per: int = 1) -> list[float]:
    """Seconds per unit of `repeats` calls of `fn` (each doing `per` units and waiting for the result)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) / per)
    return out


def _first_call(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _load(files, case, quick):
    inputs = dict(np.load(_inputs_path(files, case)))
    return case.config(quick), inputs


# --- the JAX worker ---------------------------------------------------------------------------------------------

def _read_variables(files, case) -> dict:
    from flax import serialization
    with open(os.path.join(files, f"{case.name}.msgpack"), "rb") as f:
        return serialization.msgpack_restore(f.read())


class JaxTrainer:
    """jaxdiff's real train step (`compile_train_step`, 1-device mesh, the config's optimiser) on the ported weights
    and the shared batch. `first_step()` lowers, compiles and runs one step; `run(n)` runs n steps and waits."""

    def __init__(self, config, inputs, variables):
        import jax
        from jaxdiff import tasks
        from jaxdiff.training import sharding as shd
        from jaxdiff.training.state import TrainState, make_optimizer
        self.config, self.task = config, tasks.build(config)
        self.mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), shd.BATCH_AXES)
        create = functools.partial(TrainState.create, tx=make_optimizer(config.train))
        self.shardings = shd.state_sharding(jax.eval_shape(create, variables), self.mesh)
        self.state = jax.jit(create, out_shardings=self.shardings)(variables)  # distinct buffers, as init_state
        self.batch = jax.device_put(_batch(inputs), shd.batch_sharding(self.mesh))
        self.rng, self.compiled = jax.random.key(0), None

    def first_step(self):
        from jaxdiff.training import step as step_lib
        jitted = step_lib.compile_train_step(self.task, self.config.train, self.mesh, self.shardings)
        self.compiled = jitted.lower(self.state, self.batch, self.rng).compile()
        self.run(1)

    def run(self, n: int):
        import jax
        for _ in range(n):
            self.state, metrics = self.compiled(self.state, self.batch, self.rng)
        jax.block_until_ready(metrics)


def _measure_training(trainer, sizes: Sizes, base: dict) -> dict:
    """First step, then warm-up, then `repeats` timed runs of `train_steps` steps, then 2 steps for memory
    (growth over `base` = `_baseline()` taken before the model was built)."""
    first = _first_call(trainer.first_step)
    trainer.run(sizes.warmup)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train = _time_calls(lambda: trainer.run(sizes.train_steps), sizes.repeats, sizes.train_steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (sizes.repeats * sizes.train_steps)
    with sampled_peak() as mem:
        trainer.run(2)
    return dict(train_step_s=train, first_step_s=first, page_faults_per_step=faults,
                sampled_peak_mb=mem["peak_mb"] - base["live"],
                rss_delta_mb=_maxrss_mb() - base["rss"])


def _measure_chain(chain: Callable[[], None], sizes: Sizes) -> dict:
    return dict(ddim_first_s=_first_call(chain), ddim_s=_time_calls(chain, sizes.repeats))


def _xla_peak_mb(compiled) -> float:
    """Arguments + outputs - aliased (donated) + temporaries of a compiled executable, MB."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes) / 2 ** 20


def jax_worker(case: Case, quick: bool, sizes: Sizes, files: str) -> dict:
    """Train-step and DDIM measurements of jaxdiff (see the module docstring)."""
    import jax
    from jaxdiff.diffusion import samplers
    from jaxdiff.training import sharding as shd
    config, inputs = _load(files, case, quick)
    base = _baseline()
    trainer = JaxTrainer(config, inputs, _read_variables(files, case))
    out = _measure_training(trainer, sizes, base)
    out.update(peak_memory_mb=_xla_peak_mb(trainer.compiled), threads=f"XLA default ({os.cpu_count()} cores)",
               memory_method="XLA memory_analysis: arguments + outputs - aliased + temporaries")
    if not case.is_diffusion(quick):
        return out
    task, variables = trainer.task, jax.tree.map(jax.numpy.asarray, _read_variables(files, case))
    cond = {"image": jax.numpy.asarray(inputs["cond_image"])} if config.task == "segmentation_diffusion" else None
    clip = float(config.diffusion.get("clip_x0", 1.0)) or None

    @jax.jit
    def sample(variables, x_T, cond):
        return samplers.ddim_sample(task.denoise_fn(variables), task.schedule, x_T.shape, jax.random.key(1),
                                    num_steps=sizes.ddim_steps, eta=0.0, prediction=task.prediction, cond=cond,
                                    clip_x0=clip, x_T=x_T, sharding=sharding)

    x_T, result = jax.numpy.asarray(inputs["x_T"]), {}
    # as `python -m jaxdiff.sample` (DiffusionTask.jitted_sample): the batch split over the devices, on this CPU one
    # per core (`jaxdiff.set_cpu_devices` in worker_main); the train step above uses one device
    sharding, variables, (x_T, cond) = shd.place_for_sampling(x_T.shape[0], variables, (x_T, cond))
    out["sample_devices"] = 1 if sharding is None else len(sharding.device_set)

    def chain():
        result["x"] = sample(variables, x_T, cond).block_until_ready()

    out.update(_measure_chain(chain, sizes))
    np.save(os.path.join(files, f"{case.name}-jax-sample.npy"), np.asarray(result["x"]))
    return out


# --- the PyTorch workers ----------------------------------------------------------------------------------------

def _torch_optimizer(train_cfg, params):
    """torch.optim twin of `jaxdiff.training.state.make_optimizer` (constant lr: the value does not change speed)."""
    import torch
    name, lr = train_cfg.get("optimizer", "adamw"), float(train_cfg.lr)
    betas = (float(train_cfg.get("b1", 0.9)), float(train_cfg.get("b2", 0.999)))
    if name == "adamw":
        return torch.optim.AdamW(params, lr, betas=betas, weight_decay=float(train_cfg.get("weight_decay", 0.0)))
    if name == "adam":
        return torch.optim.Adam(params, lr, betas=betas)
    return torch.optim.SGD(params, lr, momentum=float(train_cfg.get("momentum", 0.9)))


def _torch_loss(config, net, vae, batch, alphas_cumprod) -> Callable:
    """() -> scalar training loss of the config's task, as jaxdiff's task computes it (fresh t / noise per call)."""
    import torch
    import torch.nn.functional as F
    from benchmarks.torch_models import diffusion_loss
    image = _to_torch(batch["image"])
    mask = _to_torch(batch["mask"]) if "mask" in batch else None
    if config.task == "segmentation":
        weights = config.get("loss", {})

        def seg_loss():
            logits = net(image)
            loss = F.binary_cross_entropy_with_logits(logits, mask)
            error = (logits[:, :1] - mask).abs()
            recon, mu, logvar = vae(error)
            loss = loss + float(weights.get("error_weight", 0.5)) * F.mse_loss(recon, error)
            loss = loss + float(weights.get("kl_weight", 0.0)) * -0.5 * torch.mean(1 + logvar - mu ** 2 - logvar.exp())
            if float(weights.get("dice_weight", 0.0)):
                prob = torch.sigmoid(logits)
                inter = (prob * mask).sum((1, 2, 3))
                dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + mask.sum((1, 2, 3)) + 1)
                loss = loss + float(weights.dice_weight) * dice.mean()
            return loss
        return seg_loss
    x0, cond = (mask * 2 - 1, {"image": image}) if mask is not None else (image, None)

    def denoise_loss():
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],))
        return diffusion_loss(net, x0, t, torch.randn_like(x0), alphas_cumprod, cond,
                              config.diffusion.get("prediction", "eps"))
    return denoise_loss


class TorchTrainer:
    """zero_grad / loss / backward / clip_grad_norm_ / step / EMA lerp, as the config's `train` block asks."""

    def __init__(self, config, modules, loss_fn):
        self.modules, self.loss_fn = modules, loss_fn
        self.params = [p for p in modules.parameters() if p.requires_grad]
        self.opt = _torch_optimizer(config.train, self.params)
        self.clip, self.decay = float(config.train.get("grad_clip", 0.0)), float(config.train.get("ema", 0.0))
        self.ema = [p.detach().clone() for p in self.params] if self.decay else []

    def step(self):
        import torch
        self.opt.zero_grad(set_to_none=True)
        self.loss_fn().backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        if self.ema:
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.decay)

    def first_step(self):
        self.step()

    def run(self, n: int):
        for _ in range(n):
            self.step()


def _torch_ddim(net, x_T, cond, alphas_cumprod, ts, clip, prediction="eps"):
    """Deterministic DDIM (eta 0) over descending timesteps `ts` for an eps- or v-predicting `net`, clipping x0 to
    [-clip, clip] as jaxdiff does."""
    import torch
    x, a = x_T, alphas_cumprod.double()
    prevs = list(ts[1:]) + [-1]
    for t, t_prev in zip(ts, prevs):
        at, ap = float(a[t]), float(a[t_prev]) if t_prev >= 0 else 1.0
        out = net(x, torch.full((x.shape[0],), int(t), dtype=torch.long), cond)
        if prediction == "v":  # v = sqrt(a) eps - sqrt(1 - a) x0
            eps = math.sqrt(1 - at) * x + math.sqrt(at) * out
        elif prediction == "eps":
            eps = out
        else:
            raise ValueError(f"benchmark DDIM supports eps and v prediction, not {prediction!r}")
        x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
        if clip:
            x0 = x0.clamp(-clip, clip)
            eps = (x - math.sqrt(at) * x0) / math.sqrt(1 - at)
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
    return x


def _torch_setup(case: Case, quick: bool, files: str, role: str):
    """(config, inputs, modules, weights, net, TorchTrainer, `_baseline()` before the model was built) of `role`:
    "torch" / "torch.compile" (the twin with the ported weights) or a BASELINES name (own random weights)."""
    import torch
    config, inputs = _load(files, case, quick)
    base = _baseline()
    torch.manual_seed(0)
    if role in BASELINES:
        module, net = baseline_net(role, config.model, int(config.data.get("channels", 1)))
        modules, vae = torch.nn.ModuleDict({"net": module}), None
        weights = {k: v.clone() for k, v in modules.state_dict().items()}
    else:
        modules = _torch_modules(config)
        weights = torch.load(os.path.join(files, f"{case.name}.pt"))
        modules.load_state_dict(weights)
        wrap = torch.compile if role == "torch.compile" else (lambda m: m)
        net, vae = wrap(modules["net"]), wrap(modules["vae"]) if "vae" in modules else None
    loss = _torch_loss(config, net, vae, _batch(inputs), torch.from_numpy(inputs["alphas_cumprod"]))
    trainer = TorchTrainer(config, modules.train(), loss)
    return config, inputs, modules, weights, net, trainer, base


def torch_worker(case: Case, quick: bool, sizes: Sizes, files: str, role: str, threads: int) -> dict:
    """Train-step and DDIM measurements of the PyTorch twin (role "torch": eager, "torch.compile":
    torch.compile(model)) or of a baseline (role in BASELINES, eager)."""
    import torch
    torch.set_num_threads(threads)
    config, inputs, modules, weights, net, trainer, base = _torch_setup(case, quick, files, role)
    out = _measure_training(trainer, sizes, base)
    out.update(peak_memory_mb=out["sampled_peak_mb"], threads=f"torch.set_num_threads({threads})",
               params=sum(p.numel() for p in modules["net"].parameters()),
               memory_method="peak live malloc'd bytes over 2 steps (sampled) - before the model was built")
    if not case.is_diffusion(quick):
        return out
    modules.load_state_dict(weights)
    modules.eval()
    x_T = _to_torch(inputs["x_T"])
    cond = {"image": _to_torch(inputs["cond_image"])} if config.task == "segmentation_diffusion" else None
    clip, alphas_cumprod = float(config.diffusion.get("clip_x0", 1.0)) or None, torch.from_numpy(inputs["alphas_cumprod"])
    result = {}

    def chain():
        with torch.inference_mode():
            result["x"] = _torch_ddim(net, x_T, cond, alphas_cumprod, inputs["ddim_ts"], clip,
                                      config.diffusion.get("prediction", "eps"))

    out.update(_measure_chain(chain, sizes))
    if role not in BASELINES:  # only the twin's samples can match jaxdiff's (same weights)
        np.save(os.path.join(files, f"{case.name}-{role}-sample.npy"), _to_nhwc(result["x"]))
    return out


# --- profiling (--profile) --------------------------------------------------------------------------------------

_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\(")


@dataclasses.dataclass(frozen=True)
class HloOp:
    """One HLO instruction of a compiled module, as much as the profile needs."""

    opcode: str
    op_name: str  # JAX's metadata, e.g. "jit(train_step)/transpose(jvp(UNet))/conv_1/conv_general_dilated"
    shape: str
    calls: str | None  # the fused computation of a fusion
    window: int  # spatial size of a convolution's window (a weight-gradient convolution spans the feature map)
    ynn: bool  # a fusion handed to XLA:CPU's YNNPACK library


def _hlo_index(hlo_text: str) -> tuple[dict, dict]:
    """({instruction name: HloOp}, {computation name: set of opcodes}) of `compiled.as_text()`."""
    instrs, comps, current = {}, collections.defaultdict(set), None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            current = head.group(1)
            continue
        m = _HLO_LINE.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%([\w.\-]+)", line)
        window = re.search(r"window=\{size=([\dx]+)", line)
        instrs[name] = HloOp(opcode, op_name.group(1) if op_name else "", shape, calls.group(1) if calls else None,
                             math.prod(int(k) for k in window.group(1).split("x")) if window else 0,
                             "__ynn_fusion" in line)
        comps[current].add(opcode)
    return instrs, comps


def _phase(op: HloOp) -> str:
    """Which part of the step an HLO op comes from, by the JAX transformation stack in its metadata. XLA's
    rewrite of weight-gradient convolutions drops the metadata; they are recognised by their window."""
    if "transpose(" in op.op_name or (op.opcode == "convolution" and not op.op_name and op.window > 49):
        return "backward"
    if "jvp(" in op.op_name:
        return "forward"
    return "optimizer / other"


def _category(op: HloOp, comps) -> str:
    inner = comps.get(op.calls, set()) if op.calls else set()
    if op.opcode == "convolution" or "convolution" in inner:
        return "convolution"
    kind = "dot (matmul)" if op.opcode == "dot" or "dot" in inner else \
        "reduce" if inner & {"reduce", "reduce-window"} else "elementwise / copy"
    return f"YNNPACK fusion: {kind}" if op.ynn else f"fusion: {kind}" if op.opcode == "fusion" else \
        kind if kind == "dot (matmul)" else op.opcode


def profile_jax(case: Case, quick: bool, files: str, steps: int = 3) -> dict:
    """Per-HLO-op thunk time of jaxdiff's train step from a `jax.profiler` trace, joined with the HLO metadata."""
    import jax
    from jax.profiler import ProfileData
    trainer = JaxTrainer(*_load(files, case, quick), _read_variables(files, case))
    trainer.first_step()
    trainer.run(2)
    trace_dir = os.path.join(files, "jax-trace")
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        trainer.run(steps)
    wall = (time.perf_counter() - t0) / steps
    compiled = trainer.compiled
    instrs, comps = _hlo_index(compiled.as_text())
    per_op = collections.Counter()
    for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                for ev in line.events:
                    if ev.name in instrs:
                        per_op[ev.name] += ev.duration_ns / 1e3 / steps
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    rows = [dict(op=name, category=_category(instrs[name], comps), phase=_phase(instrs[name]),
                 shape=instrs[name].shape[:60], us=us) for name, us in per_op.items()]
    counts = collections.Counter(op.opcode for op in instrs.values())
    return dict(rows=rows, wall_ms=wall * 1e3, flops=float(cost.get("flops", 0.0)),
                bytes=float(cost.get("bytes accessed", 0.0)), op_counts=dict(counts.most_common(12)))


def profile_torch(case: Case, quick: bool, files: str, threads: int, steps: int = 3) -> dict:
    """Self CPU time per aten op of the eager train step (torch.profiler)."""
    import torch
    torch.set_num_threads(threads)
    trainer = _torch_setup(case, quick, files, "torch")[5]
    trainer.run(3)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.run(steps)
    wall = (time.perf_counter() - t0) / steps
    rows = [dict(op=e.key, us=e.self_cpu_time_total / steps, calls=e.count // steps) for e in prof.key_averages()]
    return dict(rows=rows, wall_ms=wall * 1e3)


def _profile_markdown(case: Case, jx: dict, tc: dict) -> str:
    total = sum(r["us"] for r in jx["rows"]) or 1.0
    by_cat = collections.Counter()
    for r in jx["rows"]:
        by_cat[(r["category"], r["phase"])] += r["us"]
    lines = [f"## JAX train step of {case.label}", "",
             f"Wall time per step under the profiler: {jx['wall_ms']:.1f} ms; summed thunk time {total / 1e3:.1f} ms "
             f"(thunks can overlap on the {os.cpu_count()} cores). XLA cost analysis (XLA's ops; jaxdiff's native CPU "
             f"convolutions, `custom-call` rows, count none): {jx['flops'] / 1e9:.2f} GFLOP and {jx['bytes'] / 2 ** 20:.0f} MB accessed per step ({jx['flops'] / jx['wall_ms'] / 1e6:.1f} GFLOP/s). "
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


# --- the parent: run every worker, write the results ------------------------------------------------------------

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


def _worker_cmd(args, role: str, case: Case, files: str) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.run", "--worker", role, "--case", case.name, "--files", files,
           "--torch-threads", str(args.torch_threads)]
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    return cmd + (["--quick"] if args.quick else [])


def run_framework(args, fw: str, case: Case, files: str) -> dict:
    """`run_worker` of framework `fw`; {"error": NOT_INSTALLED} for a baseline whose package is missing."""
    if fw in BASELINES and importlib.util.find_spec(fw) is None:
        return {"error": NOT_INSTALLED}
    return run_worker(args, fw, case, files)


def glibc_tunables() -> str:
    """GLIBC_TUNABLES of every worker, whatever its framework: the caller's, else jaxdiff's CLI default (large
    allocations on transparent huge pages, `jaxdiff.MALLOC_TUNABLE`). Set `GLIBC_TUNABLES=glibc.malloc.hugetlb=0`
    to measure without."""
    import jaxdiff
    return os.environ.get("GLIBC_TUNABLES") or jaxdiff.MALLOC_TUNABLE


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


def _row(case: Case, fw: str, res: dict, eager: dict, info: dict, sizes: Sizes) -> dict:
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
               page_faults_per_step=res.get("page_faults_per_step", ""))
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
              "ddim_speedup_min", "ddim_speedup_max", "sample_devices")


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


def _versions() -> str:
    from importlib.metadata import version
    return ", ".join(f"{p} {version(p)}" for p in ("jax", "jaxlib", "flax", "optax", "torch"))


def _kernel_status() -> str:
    from jaxdiff import kernels
    if not kernels.enabled():
        return f"off (`{kernels.ENV_SWITCH}=0`): every convolution is XLA's"
    width = kernels.vector_width()
    return (f"on: float32 3x3 stride-1 convolutions as Winograd F(2x2, 3x3) (`jaxdiff/kernels`, {width}-float "
            "vectors)" if width else "unavailable (no C++ compiler or a failed build): every convolution is XLA's")


def _report(args, rows, infos, notes, sizes, started: str, load: float, command: str) -> str:
    """The markdown report; `infos`: {case name: prepare()'s info with "batch" and "image_size"}."""
    split = sorted({r["sample_devices"] for r in rows if r["framework"] == "jax" and r.get("sample_devices")})
    lines = [f"# jaxdiff vs PyTorch on {machine_slug()}", "",
             f"- command: `{command}`", f"- date: {started}; load average at start: {load:.2f}",
             f"- CPU: {machine_slug()} ({os.cpu_count()} logical cores), Python {platform.python_version()}",
             f"- versions: {_versions()}",
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
             f"- jaxdiff's native CPU kernels: {_kernel_status()}", "",
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
    "`python -m jaxdiff.sample` does, the JAX worker gives XLA one CPU device per core (`jaxdiff.set_cpu_devices`) "
    "and splits the DDIM batch over them (the CSV's sample_devices); its train step runs on one device, whose "
    "operations use all cores, as in `python -m jaxdiff.train`.",
)


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
            rows += [_row(case, fw, res, results.get("torch", {}), info, sizes) for fw, res in results.items()]
            notes += _sample_agreement(case, files, frameworks) + _baseline_notes(case, config, results)
    if "torch.compile" not in frameworks:
        why = "--quick skips it" if args.quick else "not in --frameworks"
        notes.append(f"torch.compile: not run ({why}: a cold Inductor compile takes minutes on this CPU; "
                     "add --frameworks jax torch torch.compile).")
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = _report(args, rows, infos, notes, sizes, started, load, command.strip())
    _write(args, rows, report)
    return report


def _baseline_notes(case, config, results) -> list[str]:
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


def _sample_agreement(case, files, frameworks) -> list[str]:
    ref = os.path.join(files, f"{case.name}-jax-sample.npy")
    out = []
    for fw in [f for f in frameworks if f in TWIN_FRAMEWORKS[1:]] if os.path.exists(ref) else ():
        path = os.path.join(files, f"{case.name}-{fw}-sample.npy")
        if os.path.exists(path):
            diff = float(np.max(np.abs(np.load(path) - np.load(ref))))
            out.append(f"{case.name}: DDIM samples, max |jax - {fw}| = {diff:.1e} (values in [-1, 1])")
    return out


def _write(args, rows, report):
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
                  f"{_versions()}\n\n" + _profile_markdown(case, jx, tc))
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
    if role in ("jax", "profile-jax"):  # as the entry points do, before JAX starts
        jaxdiff.set_cpu_fusion(case.config(args.quick).get("xla_cpu_fusion"))
    if role == "jax":  # as `python -m jaxdiff.sample` does
        jaxdiff.set_cpu_devices()
    try:
        if role == "jax":
            res = jax_worker(case, args.quick, sizes, args.files)
        elif role in FRAMEWORKS:
            res = torch_worker(case, args.quick, sizes, args.files, role, args.torch_threads)
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
    p.add_argument("--full", action="store_true", help="also S0 at full size")
    p.add_argument("--profile", action="store_true",
                   help="op-level profile of the train step of --cases (default unet2d), JAX and torch eager")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"), help="results directory")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, --quick 2)")
    p.add_argument("--cases", nargs="+", choices=sorted(CASE_BY_NAME), help="only these models")
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, help="only these frameworks (jax first)")
    p.add_argument("--torch-threads", type=int, default=len(os.sched_getaffinity(0)))
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
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.quick and not args.worker:  # this process (the parity check) and every worker inherit it
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_XLA_FLAGS}".strip()
    if args.worker:
        worker_main(args)
    else:
        print(run_profile(args) if args.profile else run_all(args))


if __name__ == "__main__":
    main()
