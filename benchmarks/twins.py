"""The PyTorch twin of a case, its weights ported to Flax, and the shared inputs: written once by the parent
(`prepare`), read by every worker (`load`, `read_variables`). Arrays are NHWC numpy; torch tensors NCHW."""
from __future__ import annotations

import os

import numpy as np

from benchmarks.cases import Case, Sizes


# --- shared inputs: written once by the parent, read by every worker --------------------------------------------

def inputs_path(files, case):
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


def train_batch(inputs: dict) -> dict:
    return {k: inputs[k] for k in ("image", "mask") if k in inputs}


def torch_modules(config):
    """The PyTorch twin of the config's model (a ModuleDict: "net", and "vae" for the TransUNet-style segmenter's
    error head)."""
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
    """Flax variables of the task's model from the torch twin (TransformerUNet: segmenter + error head, as the task
    nests them)."""
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


def to_torch(x, device="cpu"):
    """NHWC numpy -> NCHW torch tensor on `device`."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(device)


def to_nhwc(t):
    return np.moveaxis(t.detach().float().cpu().numpy(), 1, -1)


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
    modules = torch_modules(config)
    _perturb(modules)
    variables = _port(modules)
    schedule = getattr(task, "schedule", None)  # None for the segmenter (not a diffusion model)
    ts = samplers.ddim_timesteps(schedule.num_timesteps, sizes.ddim_steps)[::-1] if schedule else []
    inputs = _make_inputs(config, sizes, schedule.alphas_cumprod if schedule else [], ts)
    np.savez(inputs_path(files, case), **inputs)
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
    batch = train_batch(inputs)
    with torch.no_grad():
        if "vae" in modules:
            ours = jax.jit(lambda v: task.apply(v, batch["image"], batch["mask"])[0])(variables)
            return np.asarray(ours), to_nhwc(modules["net"](to_torch(batch["image"])))
        x0 = batch["mask"] * 2 - 1 if "mask" in batch else batch["image"]
        t = np.linspace(0, len(inputs["alphas_cumprod"]) - 1, len(x0)).astype(np.int32)
        cond = {"image": batch["image"]} if "mask" in batch else None
        ours = jax.jit(lambda v: task.apply(v, x0, t, cond))(variables)
        t_cond = {"image": to_torch(batch["image"])} if cond else None
        return np.asarray(ours), to_nhwc(modules["net"](to_torch(x0), torch.from_numpy(t).long(), t_cond))


def load(files, case, quick):
    inputs = dict(np.load(inputs_path(files, case)))
    return case.config(quick), inputs


def read_variables(files, case) -> dict:
    from flax import serialization
    with open(os.path.join(files, f"{case.name}.msgpack"), "rb") as f:
        return serialization.msgpack_restore(f.read())
