"""The training loop end to end, as real `python -m jaxdiff.train` runs of a tiny quickstart model: outputs of a
run, resume equals uninterrupted, re-running a finished run, one-line CLI errors that leave a work directory
untouched, and the sample / summary entry points.

The helpers here (tiny config, runners, checkpoint readers) are shared by test_resilience.py and
test_multihost.py. Runs share a persistent JAX compilation cache, so only the first run of a program compiles.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_python

QUICKSTART = "configs/quickstart.py"
# The quickstart model shrunk to compile and run in seconds; a constant learning rate (no warmup) makes the
# schedule independent of train.steps and moves every parameter on every step.
TINY = ["--config.data.image_size=16", "--config.model.base_channels=8", "--config.model.channel_mults=(1,2)",
        "--config.model.attention_levels=(1,)", "--config.model.groups=4", "--config.data.num_cases=3",
        "--config.train.batch_size=4", "--config.sample.num=2", "--config.diffusion.sample_steps=2",
        "--config.train.log_every=1", "--config.train.lr=1e-3", "--config.train.warmup_steps=0",
        "--config.train.lr_schedule=constant"]


@pytest.fixture(scope="session")
def jax_env(request) -> dict:
    """Environment for the runs: a persistent JAX compilation cache in pytest's cache folder (.pytest_cache),
    shared by all runs and sessions (JAX keys entries by program, options and versions)."""
    cache = request.config.cache.mkdir("jax_compilation_cache")
    return {"JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def train_args(workdir, *overrides) -> list[str]:
    """`-m jaxdiff.train` arguments of the tiny quickstart run in `workdir` (later overrides win); `--json`: the
    report is printed as one JSON line, read by the tests."""
    return ["-m", "jaxdiff.train", "--config", QUICKSTART, "--workdir", str(workdir), "--quiet", "--json", *TINY,
            *overrides]


def train(workdir, *overrides, env: dict, devices: int | None = None) -> subprocess.CompletedProcess:
    """Run the tiny training command to completion and check it succeeded."""
    proc = run_python(train_args(workdir, *overrides), devices=devices, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def start_train(workdir, *overrides, env: dict, extra_env: dict | None = None) -> subprocess.Popen:
    """Start the tiny training command in the background (same environment as `conftest.run_python`)."""
    full = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env,
                **(extra_env or {}))
    return subprocess.Popen([sys.executable, *train_args(workdir, *overrides)], cwd=REPO, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def metrics_lines(workdir) -> list[dict]:
    """metrics.jsonl as dicts; strict JSON (NaN or Infinity literals fail)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []

    def reject(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")

    with open(path) as f:
        return [json.loads(line, parse_constant=reject) for line in f if line.strip()]


def run_report(workdir) -> dict:
    """The end-of-run report of the last train command in `workdir` (its report.json)."""
    return json.loads((workdir / "report.json").read_text())


def checkpoint_steps(workdir) -> list[int]:
    """Step numbers of the complete checkpoint directories."""
    ckpt = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) if os.path.isdir(ckpt) else []


def load_state(workdir):
    """The latest checkpoint's train state, restored in this process as the sample/evaluate tools do."""
    from jaxdiff.experiment import load_for_inference
    return load_for_inference(str(workdir))[2]


def state_leaves(state) -> dict:
    """{path: numpy array} of the parameters, EMA parameters, optimiser state and counters of a state."""
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def assert_same_state(a, b, atol: float = 0.0, view=None):
    """Every leaf equal (bitwise with atol = 0); `view(path, array) -> array` selects what is compared."""
    la, lb = state_leaves(a), state_leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        x, y = (la[k], lb[k]) if view is None else (view(k, la[k]), view(k, lb[k]))
        np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=k)


def tree_hashes(root) -> dict:
    """{relative path: sha256} of every file under `root`."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_is_png(path, min_side: int = 16):
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= min_side, (path, img.format, img.size)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, jax_env):
    """A finished 4-step run: (workdir, the train command's stdout report)."""
    workdir = tmp_path_factory.mktemp("loop") / "run"
    train(workdir, "--config.train.steps=4", env=jax_env)
    return workdir, run_report(workdir)


@pytest.mark.slow
def test_run_writes_config_metrics_events_checkpoint_samples_report(finished):
    workdir, report = finished
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["steps"] == 4 and config["model"]["base_channels"] == 8
    lines = metrics_lines(workdir)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) and m["finite"] == 1 for m in lines)
    assert [n for n in os.listdir(workdir / "tensorboard") if n.startswith("events.out.tfevents")]
    assert checkpoint_steps(workdir)[-1] == 4
    pngs = list((workdir / "samples").glob("samples_step*.png"))
    assert len(pngs) == 1
    assert_is_png(pngs[0])
    on_disk = json.loads((workdir / "report.json").read_text())
    assert on_disk["step"] == report["step"] == 4 and np.isfinite(on_disk["pixel_mmd"])
    assert int(load_state(workdir).step) == 4


@pytest.mark.slow
def test_resume_equals_uninterrupted(finished, tmp_path, jax_env):
    """2 steps, then the same work directory re-run with steps=4, gives the state of 4 steps in one run."""
    uninterrupted, _ = finished
    workdir = tmp_path / "resumed"
    train(workdir, "--config.train.steps=2", env=jax_env)
    assert checkpoint_steps(workdir)[-1] == 2
    half = state_leaves(load_state(workdir))
    train(workdir, "--config.train.steps=4", env=jax_env)
    assert [m["step"] for m in metrics_lines(workdir)] == [1, 2, 3, 4]
    resumed, full = load_state(workdir), load_state(uninterrupted)
    assert_same_state(resumed, full)
    moved = [k for k, v in state_leaves(full).items() if ".params" in k and np.abs(v - half[k]).max() > 1e-4]
    assert moved, "steps 3 and 4 should change the parameters"


def tensorboard_events(logdir) -> list:
    """The tensorboardX `Event` protos of every event file in `logdir`, files in name (= creation time) order; a
    minimal TFRecord reader (length, its CRC, the record, its CRC; CRCs not checked): TensorBoard is not installed."""
    from tensorboardX.proto import event_pb2
    events = []
    for name in sorted(n for n in os.listdir(logdir) if n.startswith("events.out.tfevents")):
        data, i = (logdir / name).read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            events.append(event)
            i += 12 + n + 4
    return events


def tensorboard_scalar_steps(logdir, tag: str) -> tuple[list[int], list[int]]:
    """(steps of `tag` as written, steps as TensorBoard shows them): its event loader, on a SessionLog START event
    (tensorboardX's `purge_step` marker) at step s, drops the events of steps >= s read before it."""
    from tensorboardX.proto import event_pb2
    written, shown = [], []
    for event in tensorboard_events(logdir):
        if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
            shown = [s for s in shown if s < event.step]
        if any(v.tag == tag for v in event.summary.value):
            written.append(event.step)
            shown.append(event.step)
    return written, shown


@pytest.mark.slow
def test_resume_after_a_kill_logs_each_step_once(finished, tmp_path, jax_env):
    """A run killed at step 4 after its checkpoint at step 2 (made here from a finished 4-step run: checkpoint 4
    removed, a half-written row of step 5 appended) logged steps 3 and 4 already; the resumed run repeats them, and
    metrics.jsonl and TensorBoard (with its purge rule) then hold each step once, with the resumed values, which are
    the uninterrupted run's."""
    workdir = tmp_path / "killed"
    train(workdir, "--config.train.steps=4", "--config.train.ckpt_every=2", env=jax_env)
    assert checkpoint_steps(workdir) == [2, 4]
    shutil.rmtree(workdir / "checkpoints" / "4")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    train(workdir, "--config.train.steps=4", env=jax_env)
    lines = metrics_lines(workdir)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    uninterrupted = metrics_lines(finished[0])
    assert [m["loss"] for m in lines] == [m["loss"] for m in uninterrupted]
    written, shown = tensorboard_scalar_steps(workdir / "tensorboard", "train/loss")
    assert written == [1, 2, 3, 4, 3, 4]  # the killed run's steps 3 and 4 stay in its file ...
    assert shown == [1, 2, 3, 4]          # ... behind the resumed run's purge marker at step 3


@pytest.mark.slow
def test_cpu_devices_train_on_the_first_and_match_one_device(finished, tmp_path, jax_env):
    """`--cpu_devices 2` (on a CPU, the default is one device per core): the train step runs on the first device,
    the end-of-run samples are split over both; the state is the one-device run's, bitwise, and so is what the
    report measures of the samples (to float tolerance: the split sampler is another program)."""
    one_dir, one_report = finished
    workdir = tmp_path / "two_devices"
    train(workdir, "--config.train.steps=4", "--cpu_devices", "2", env=jax_env)
    report = run_report(workdir)
    assert_same_state(load_state(workdir), load_state(one_dir))
    assert report["step"] == 4
    np.testing.assert_allclose(report["pixel_mmd"], one_report["pixel_mmd"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_rerunning_a_finished_run_does_not_retrain(finished, jax_env):
    workdir, _ = finished
    before_state, before_metrics, before_ckpts = load_state(workdir), metrics_lines(workdir), checkpoint_steps(workdir)
    train(workdir, "--config.train.steps=4", env=jax_env)
    report = run_report(workdir)
    assert report["step"] == 4 and "first_step_s" not in report       # no step ran
    assert metrics_lines(workdir) == before_metrics
    assert checkpoint_steps(workdir) == before_ckpts
    assert_same_state(load_state(workdir), before_state)


def _write_brats_with_corrupt_segs(root) -> list[str]:
    """A 4-case BraTS-layout folder (16 x 16 x 12 volumes) whose seg files are all random bytes."""
    from jaxdiff.data.sources import brats
    from jaxdiff.io import save_nifti
    rng = np.random.default_rng(0)
    corrupt = []
    for c in range(4):
        case = f"BraTS20_Training_{c:03d}"
        os.makedirs(root / case)
        for m in brats.MODALITIES:
            save_nifti(str(root / case / f"{case}_{m}.nii.gz"), rng.random((16, 16, 12)).astype(np.float32),
                       np.diag([1.5, 1.5, 2.0, 1.0]))
        seg = root / case / f"{case}_seg.nii.gz"
        seg.write_bytes(rng.bytes(3000))
        corrupt.append(str(seg))
    return corrupt


def _assert_one_line_error(proc, names):
    """Exit status 2, stderr exactly one `error:` line naming one of `names`, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    assert any(n in lines[0] for n in names), lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown_key", "missing_folder", "corrupt_nifti"])
def test_cli_errors_are_one_line_and_leave_workdir_untouched(case, finished, tmp_path, jax_env):
    """Each bad input ends with `error: ...` naming the key or file, status 2, and the work directory of a
    finished run byte-for-byte as it was (the corrupt file is only met when training reads data: steps=6)."""
    workdir, _ = finished
    if case == "unknown_key":
        overrides, names = ["--config.train.stepz=3"], ["train.stepz"]
    elif case == "missing_folder":
        overrides, names = ["--config.data.source=brats", "--config.data.root=/nonexistent"], ["/nonexistent"]
    else:
        names = _write_brats_with_corrupt_segs(tmp_path / "brats")
        overrides = ["--config.data.source=brats", f"--config.data.root={tmp_path / 'brats'}",
                     "--config.train.steps=6"]
    before = tree_hashes(workdir)
    proc = run_python(train_args(workdir, *overrides), env_extra=jax_env)
    if case == "corrupt_nifti":  # the data check lists every bad file, one line each, under one error line
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and lines[0].startswith("error: data check:"), proc.stderr[-3000:]
        assert len(lines) == 1 + len(names) and all(any(n in line for line in lines[1:]) for n in names), lines
    else:
        _assert_one_line_error(proc, names)
    assert tree_hashes(workdir) == before


@pytest.mark.slow
def test_sample_cli_writes_pngs(finished, jax_env):
    workdir, _ = finished
    proc = run_python(["-m", "jaxdiff.sample", "--workdir", str(workdir), "--num", "2"], env_extra=jax_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(proc.stdout.strip().splitlines()[-1])["written"]
    assert sorted(written) == [str(workdir / "samples" / n) for n in ("grid.png", "sample_000.png", "sample_001.png")]
    for p in written:
        assert_is_png(p)
    # the batch split over two CPU devices (one per core by default outside the tests): the same images
    split = run_python(["-m", "jaxdiff.sample", "--workdir", str(workdir), "--num", "2", "--cpu_devices", "2",
                        "--out", str(workdir / "split")], env_extra=jax_env)
    assert split.returncode == 0, split.stderr[-3000:]
    for name in ("sample_000.png", "sample_001.png"):
        one, two = (np.asarray(Image.open(d / name), np.int16) for d in (workdir / "samples", workdir / "split"))
        assert one.std() > 0 and np.abs(one - two).max() <= 1, name


def test_sample_cli_sampler_flag(finished, jax_env):
    """`--sampler dpm++ --steps 5` samples with DPM-Solver++ from a DDIM-trained run (the config's sampler is not
    changed on disk); an unknown sampler is one error line naming the flag, exit 2, nothing written."""
    workdir, _ = finished
    out = workdir / "dpm"
    proc = run_python(["-m", "jaxdiff.sample", "--workdir", str(workdir), "--num", "2", "--steps", "5",
                       "--sampler", "dpm++", "--out", str(out)], env_extra=jax_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_is_png(out / "sample_000.png")
    assert json.loads((workdir / "config.json").read_text())["diffusion"]["sampler"] == "ddim"
    bad = run_python(["-m", "jaxdiff.sample", "--workdir", str(workdir), "--sampler", "dpm", "--out",
                      str(workdir / "bad")], env_extra=jax_env)
    assert bad.returncode == 2 and "--sampler" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (workdir / "bad").exists()


def test_summary_cli_counts_parameters(jax_env):
    from jaxdiff import tasks
    from jaxdiff.config import parse
    proc = run_python(["-m", "jaxdiff.summary", "--config", QUICKSTART], env_extra=jax_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("params: "), last
    config, _ = parse(["summary", "--config", os.path.join(REPO, QUICKSTART)])
    task = tasks.build(config)
    variables = jax.eval_shape(task.init, jax.random.PRNGKey(0), task.example_batch(1))
    expected = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    assert int(last.split()[1]) == expected > 0
