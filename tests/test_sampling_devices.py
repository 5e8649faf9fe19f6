"""Data-parallel sampling: `DiffusionTask.jitted_sample` splits the batch over the devices, and
`jaxdiff.platform.set_cpu_devices` gives the CPU backend one device per core for it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_python

SPLIT = """
import json, sys
import jax, numpy as np
from jaxdiff import tasks
from jaxdiff.config import parse
from jaxdiff.training import sharding as shd
assert jax.device_count() == 4, jax.device_count()
config, _ = parse(["x", "--config", "configs/quickstart.py", "--config.data.image_size=8",
                   "--config.model.base_channels=8", "--config.model.channel_mults=(1,2)",
                   "--config.model.attention_levels=(1,)", "--config.model.groups=4", "--config.model.num_classes=3",
                   "--config.diffusion.guidance_scale=2.0", "--config.diffusion.sample_steps=3",
                   "--config.diffusion.eta=1.0"])
task = tasks.build(config)
variables = task.init(jax.random.key(0), task.example_batch(2))
variables = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), variables)
out = {}
for b in (4, 6, 5):
    mesh = shd.sampling_mesh(b)
    labels = np.arange(b) % 3
    cond, uncond = {"label": labels}, {"label": np.full((b,), 3)}
    x = task.jitted_sample(variables, (b, 8, 8, 1), jax.random.key(2), cond=cond, uncond=uncond)
    one = jax.devices()[0]
    ref = task._compiled_sample(jax.device_put(variables, one), (b, 8, 8, 1), jax.device_put(jax.random.key(2), one),
                                cond=jax.device_put(cond, one), uncond=jax.device_put(uncond, one))
    out[b] = dict(mesh=None if mesh is None else mesh.devices.size, devices=len(x.sharding.device_set),
                  ref_devices=len(ref.sharding.device_set), diff=float(np.abs(np.asarray(x) - np.asarray(ref)).max()),
                  std=float(np.asarray(ref).std()))
x, traj = task.jitted_sample(variables, (4, 8, 8, 1), jax.random.key(2), return_trajectory=True)
out["traj"] = [list(traj.shape), len(traj.sharding.device_set)]
out["inference_mesh"] = shd.inference_mesh().devices.size  # a checkpoint is restored once, not once per CPU device
print(json.dumps(out))
"""


def test_jitted_sample_splits_the_batch_over_devices_and_matches_one_device():
    """4 virtual CPU devices: batch 4 runs on 4, batch 6 on 3 (the most that divide it), batch 5 on one; with
    class conditioning, guidance and eta = 1 noise, every split gives the one-device samples."""
    proc = run_python(["-c", SPLIT], devices=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(out[b]["mesh"], out[b]["devices"], out[b]["ref_devices"]) for b in ("4", "6", "5")] == [
        (4, 4, 1), (3, 3, 1), (None, 1, 1)]
    for b in ("4", "6", "5"):
        assert out[b]["std"] > 0.1, out[b]  # real samples, not a constant
        assert out[b]["diff"] < 1e-4, (b, out[b])
    assert out["traj"] == [[3, 4, 8, 8, 1], 4]
    assert out["inference_mesh"] == 1


DEVICES = """
import json, sys, warnings
from jaxdiff import platform as jaxdiff
from jaxdiff.errors import InputError
out = {}
try:
    jaxdiff.set_cpu_devices(-1)
except InputError as e:
    out["negative"] = str(e)
out["set"] = jaxdiff.set_cpu_devices(None if sys.argv[1] == "default" else int(sys.argv[1]))
import jax
out["count"] = jax.device_count()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out["late"] = jaxdiff.set_cpu_devices(2)
out["warning"] = str(caught[0].message) if caught else ""
print(json.dumps(out))
"""


@pytest.mark.parametrize("arg, env, expect", [
    ("3", {}, (3, 3)),                                         # explicit count
    ("default", {"JAXDIFF_XLA_CPU_DEFAULTS": "0"}, (0, 1)),    # the default follows jaxdiff's CPU-defaults switch
    ("3", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, (0, 2)),  # the user's flag wins
    ("1", {}, (0, 1)),
])
def test_set_cpu_devices(arg, env, expect):
    proc = run_python(["-c", DEVICES, arg], env_extra={"JAXDIFF_XLA_CPU_DEFAULTS": "1", "JAXDIFF_ADDED_XLA_FLAGS": "",
                                                       "XLA_FLAGS": "", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["set"], out["count"]) == expect
    assert out["negative"].startswith("--cpu_devices: -1 is negative")
    assert out["late"] == 0  # once JAX has started: refused, with a warning unless the user's flag decides
    assert ("backends already exist" in out["warning"]) == ("XLA_FLAGS" not in env), out["warning"]


ENSEMBLE = """
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from jaxdiff import tasks
from test_tasks import msd_config
task = tasks.build(msd_config(ensemble=3))
variables = task.init(jax.random.key(0), task.example_batch(2))
variables = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), variables)
images = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 2)).astype(np.float32)
out = task._predict_jit(variables, images, jax.random.key(2))  # jitted_sample inside the predict jit
print(json.dumps({"devices": len(out["samples"].sharding.device_set),
                  "samples": np.asarray(out["samples"]).ravel().tolist()}))
"""


def test_medsegdiff_ensemble_split_over_devices_matches_one_device():
    """`python -m jaxdiff.evaluate`'s path for MedSegDiff (the sampler inside the predict jit): 3 members x 2 images
    = 6 chains on 3 of 4 devices (the most that divide 6) give the member probabilities of one device."""
    outs = {}
    for devices in (4, None):
        proc = run_python(["-c", ENSEMBLE], devices=devices)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[devices] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outs[4]["devices"] == 3 and outs[None]["devices"] == 1
    one = np.asarray(outs[None]["samples"])
    assert one.std() > 0.01
    # not bitwise: XLA:CPU's kernels round differently at batch 2 and 6, and the chain amplifies it (max 9.2e-5 with
    # XLA's convolutions, 1.07e-4 with the native Winograd one, of probabilities in [0, 1])
    np.testing.assert_allclose(outs[4]["samples"], one, atol=2e-4)


MESHES = """
import json
from jaxdiff import platform
platform.set_cpu_devices(2)
import jax
from jaxdiff.training import sharding as shd
explicit = {"data": 2, "fsdp": 1}  # the devices experiment.build hands make_mesh
print(json.dumps({"train": shd.make_mesh(None, platform.train_devices(None)).devices.size,
                  "explicit": shd.make_mesh(explicit, platform.train_devices(explicit)).devices.size,
                  "sampling": shd.sampling_mesh(4).devices.size, "only": platform.sampling_only_cpu_devices()}))
"""


def test_train_mesh_keeps_one_of_the_sampling_cpu_devices():
    """CPU devices made by `set_cpu_devices` for sampling: the default train mesh takes the first (one device whose
    operations use every core), an explicit mesh.data still takes them all, sampling splits over all. Devices the
    user asked for (XLA_FLAGS) are all used for training, as before."""
    proc = run_python(["-c", MESHES], env_extra={"XLA_FLAGS": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == dict(train=1, explicit=2, sampling=2, only=True)
    proc = run_python(["-c", MESHES], devices=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == dict(train=2, explicit=2, sampling=2, only=False)
