"""The worker processes: jaxdiff's train step and DDIM (`jax_worker`) and the PyTorch twin or a baseline, eager
or under `torch.compile` (`torch_worker`), each measured the same way (`measure_training`, `measure_chain`).

The PyTorch side runs on `device` ("cpu" or "cuda"); on CUDA the timed calls synchronise the device and the peak
memory is `torch.cuda.max_memory_allocated` over two steps. JAX runs on its default backend."""
from __future__ import annotations

import functools
import math
import os
import resource
import time
from typing import Callable

import numpy as np

from benchmarks import memory
from benchmarks.cases import BASELINES, Case, Sizes, baseline_net
from benchmarks.twins import load, read_variables, to_nhwc, to_torch, torch_modules, train_batch


def time_calls(fn: Callable[[], None], repeats: int, per: int = 1) -> list[float]:
    """Seconds per unit of `repeats` calls of `fn` (each doing `per` units and waiting for the result)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) / per)
    return out


def first_call(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- the JAX worker ---------------------------------------------------------------------------------------------
class JaxTrainer:
    """jaxdiff's real train step (`compile_train_step`, 1-device mesh, the config's optimiser) on `variables` (the
    ported weights) and `batch` (the task's arrays, batch first). `first_step()` lowers, compiles and runs one step;
    `run(n)` runs n steps and waits."""

    def __init__(self, config, batch: dict, variables, task=None):
        import jax
        from jaxdiff import tasks
        from jaxdiff.training import sharding as shd
        from jaxdiff.training.state import TrainState, make_optimizer
        self.config, self.task = config, task or tasks.build(config)
        self.mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), shd.BATCH_AXES)
        create = functools.partial(TrainState.create, tx=make_optimizer(config.train))
        self.shardings = shd.state_sharding(jax.eval_shape(create, variables), self.mesh)
        self.state = jax.jit(create, out_shardings=self.shardings)(variables)  # distinct buffers, as init_state
        self.batch = jax.device_put(batch, shd.batch_sharding(self.mesh))
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


def measure_training(trainer, sizes: Sizes, base: dict) -> dict:
    """First step, then warm-up, then `repeats` timed runs of `train_steps` steps, then 2 steps for memory
    (growth over `base` = `memory.memory_before()` taken before the model was built)."""
    first = first_call(trainer.first_step)
    trainer.run(sizes.warmup)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train = time_calls(lambda: trainer.run(sizes.train_steps), sizes.repeats, sizes.train_steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (sizes.repeats * sizes.train_steps)
    with memory.sampled_peak() as mem:
        trainer.run(2)
    return dict(train_step_s=train, first_step_s=first, page_faults_per_step=faults,
                sampled_peak_mb=mem["peak_mb"] - base["live"],
                rss_delta_mb=memory.maxrss_mb() - base["rss"])


def measure_chain(chain: Callable[[], None], sizes: Sizes) -> dict:
    return dict(ddim_first_s=first_call(chain), ddim_s=time_calls(chain, sizes.repeats))


def jax_worker_device() -> str:
    """JAX's default backend, with the device kind off the CPU: "cpu", "gpu (NVIDIA H100 80GB HBM3)"."""
    import jax
    backend = jax.default_backend()
    return backend if backend == "cpu" else f"{backend} ({jax.devices()[0].device_kind})"


def jax_worker(case: Case, quick: bool, sizes: Sizes, files: str) -> dict:
    """Train-step and DDIM measurements of jaxdiff (see the module docstring)."""
    import jax
    from jaxdiff.diffusion import samplers
    from jaxdiff.training import sharding as shd
    config, inputs = load(files, case, quick)
    base = memory.memory_before()
    trainer = JaxTrainer(config, train_batch(inputs), read_variables(files, case))
    out = measure_training(trainer, sizes, base)
    out.update(peak_memory_mb=memory.xla_peak_mb(trainer.compiled), threads=f"XLA default ({os.cpu_count()} cores)",
               memory_method="XLA memory_analysis: arguments + outputs - aliased + temporaries",
               device=jax_worker_device())
    if not case.is_diffusion(quick):
        return out
    task, variables = trainer.task, jax.tree.map(jax.numpy.asarray, read_variables(files, case))
    cond = {"image": jax.numpy.asarray(inputs["cond_image"])} if config.task == "segmentation_diffusion" else None
    clip = float(config.diffusion.get("clip_x0", 1.0)) or None

    @jax.jit
    def sample(variables, x_T, cond):
        return samplers.ddim_sample(task.denoise_fn(variables), task.schedule, x_T.shape, jax.random.key(1),
                                    num_steps=sizes.ddim_steps, eta=0.0, prediction=task.prediction, cond=cond,
                                    clip_x0=clip, x_T=x_T, sharding=sharding)

    x_T, result = jax.numpy.asarray(inputs["x_T"]), {}
    # as `python -m jaxdiff.sample` (DiffusionTask.jitted_sample): the batch split over the devices, on this CPU one
    # per core (`jaxdiff.platform.setup` in worker_main); the train step above uses one device
    sharding, variables, (x_T, cond) = shd.place_for_sampling(x_T.shape[0], variables, (x_T, cond))
    out["sample_devices"] = 1 if sharding is None else len(sharding.device_set)

    def chain():
        result["x"] = sample(variables, x_T, cond).block_until_ready()

    out.update(measure_chain(chain, sizes))
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


def _torch_loss(config, net, vae, batch, alphas_cumprod, device="cpu") -> Callable:
    """() -> scalar training loss of the config's task, as jaxdiff's task computes it (fresh t / noise per call);
    the batch and `alphas_cumprod` are moved to `device`."""
    import torch
    import torch.nn.functional as F
    from benchmarks.torch_models import diffusion_loss
    image = to_torch(batch["image"], device)
    mask = to_torch(batch["mask"], device) if "mask" in batch else None
    alphas_cumprod = alphas_cumprod.to(device)
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
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), device=x0.device)
        return diffusion_loss(net, x0, t, torch.randn_like(x0), alphas_cumprod, cond,
                              config.diffusion.get("prediction", "eps"))
    return denoise_loss


def synchronizer(device) -> Callable[[], None]:
    """() -> None that waits for the queued work of `device` ("cuda": `torch.cuda.synchronize`; a no-op on the CPU,
    where PyTorch runs eagerly)."""
    import torch
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when PyTorch sees a CUDA device, else "cpu"; other names unchanged."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TorchTrainer:
    """zero_grad / loss / backward / clip_grad_norm_ / step / EMA lerp, as the config's `train` block asks.
    `run(n)` waits for the device at the end (`sync`), as the JAX trainer blocks on its result."""

    def __init__(self, config, modules, loss_fn, sync: Callable[[], None] = lambda: None):
        self.modules, self.loss_fn, self.sync = modules, loss_fn, sync
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
        self.run(1)

    def run(self, n: int):
        for _ in range(n):
            self.step()
        self.sync()


def _torch_ddim(net, x_T, cond, alphas_cumprod, ts, clip, prediction="eps"):
    """Deterministic DDIM (eta 0) over descending timesteps `ts` for an eps- or v-predicting `net`, clipping x0 to
    [-clip, clip] as jaxdiff does."""
    import torch
    x, a = x_T, alphas_cumprod.double()
    prevs = list(ts[1:]) + [-1]
    for t, t_prev in zip(ts, prevs):
        at, ap = float(a[t]), float(a[t_prev]) if t_prev >= 0 else 1.0
        out = net(x, torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device), cond)
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


def torch_setup(case: Case, quick: bool, files: str, role: str, device: str = "cpu"):
    """(config, inputs, modules, weights, net, TorchTrainer, `memory.memory_before()` taken before the model was
    built) of `role`: "torch" / "torch.compile" (the twin with the ported weights) or a BASELINES name (own random
    weights), its modules and batch on `device`."""
    import torch
    config, inputs = load(files, case, quick)
    base = memory.memory_before()
    torch.manual_seed(0)
    if role in BASELINES:
        module, net = baseline_net(role, config.model, int(config.data.get("channels", 1)))
        modules, vae = torch.nn.ModuleDict({"net": module}), None
        weights = {k: v.clone() for k, v in modules.state_dict().items()}
    else:
        modules = torch_modules(config)
        weights = torch.load(os.path.join(files, f"{case.name}.pt"))
        modules.load_state_dict(weights)
        wrap = torch.compile if role == "torch.compile" else (lambda m: m)
        net, vae = wrap(modules["net"]), wrap(modules["vae"]) if "vae" in modules else None
    modules.to(device)  # before the optimiser and EMA take the parameters
    loss = _torch_loss(config, net, vae, train_batch(inputs), torch.from_numpy(inputs["alphas_cumprod"]), device)
    trainer = TorchTrainer(config, modules.train(), loss, synchronizer(device))
    return config, inputs, modules, weights, net, trainer, base


def torch_worker(case: Case, quick: bool, sizes: Sizes, files: str, role: str, threads: int,
                 device: str = "cpu") -> dict:
    """Train-step and DDIM measurements of the PyTorch twin (role "torch": eager, "torch.compile":
    torch.compile(model)) or of a baseline (role in BASELINES, eager), on `device` ("cpu", "cuda" or "auto")."""
    import torch
    torch.set_num_threads(threads)
    device = resolve_device(device)
    config, inputs, modules, weights, net, trainer, base = torch_setup(case, quick, files, role, device)
    sync = synchronizer(device)
    out = measure_training(trainer, sizes, base)
    out.update(peak_memory_mb=out["sampled_peak_mb"], threads=f"torch.set_num_threads({threads})",
               params=sum(p.numel() for p in modules["net"].parameters()),
               memory_method="peak live malloc'd bytes over 2 steps (sampled) - before the model was built",
               device="cpu")
    if device != "cpu":  # the accelerator's allocator: what stays allocated (parameters, optimiser state, EMA,
        torch.cuda.reset_peak_memory_stats()  # batch) plus the peak of the step's activations and gradients
        trainer.run(2)
        out.update(peak_memory_mb=torch.cuda.max_memory_allocated() / 2 ** 20,
                   memory_method="torch.cuda.max_memory_allocated over 2 steps",
                   device=f"{device} ({torch.cuda.get_device_name()})")
    if not case.is_diffusion(quick):
        return out
    modules.load_state_dict(weights)
    modules.eval()
    x_T = to_torch(inputs["x_T"], device)
    cond = {"image": to_torch(inputs["cond_image"], device)} if config.task == "segmentation_diffusion" else None
    clip = float(config.diffusion.get("clip_x0", 1.0)) or None
    alphas_cumprod = torch.from_numpy(inputs["alphas_cumprod"])
    result = {}

    def chain():
        with torch.inference_mode():
            result["x"] = _torch_ddim(net, x_T, cond, alphas_cumprod, inputs["ddim_ts"], clip,
                                      config.diffusion.get("prediction", "eps"))
        sync()

    out.update(measure_chain(chain, sizes))
    if role not in BASELINES:  # only the twin's samples can match jaxdiff's (same weights)
        np.save(os.path.join(files, f"{case.name}-{role}-sample.npy"), to_nhwc(result["x"]))
    return out
