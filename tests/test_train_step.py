"""The shared train step on a tiny regression task: learning, guard, accumulation, precision, compilation,
and equality across 1 and 8 devices (data parallel and FSDP)."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from conftest import run_python
from tiny_task import make_batches, run, tiny_config


def test_loss_falls_and_compiles_once():
    state, metrics, step = run(tiny_config(), make_batches(60))
    assert metrics[-1]["loss"] < 0.1 * metrics[0]["loss"]
    assert step._cache_size() == 1  # no recompilation after the first step
    assert int(state.step) == 60 and int(state.skipped) == 0


def test_init_on_concrete_arrays_equals_the_traced_init_and_ignores_non_array_entries():
    from tiny_task import RegressionTask
    config = tiny_config()
    config.model.batchnorm = True
    task = RegressionTask(config)
    batch = dict(make_batches(1)[0], case_id=np.array(["a"] * 16), note="not an array")
    rng = jax.random.key(3)
    compiled = task.init(rng, batch)  # concrete arrays: one compiled call (jaxdiff.platform.run_once_compiled)
    traced = jax.jit(lambda r, x: task.init(r, {"x": x}))(rng, batch["x"])
    assert set(compiled) == {"params", "batch_stats"}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), compiled, traced)
    assert np.abs(compiled["params"]["Dense_0"]["kernel"]).min() > 0  # drawn, not zeros


def test_non_finite_update_is_skipped_and_counted():
    batches = make_batches(3)
    batches[1]["x"][0, 0] = np.nan
    state_ok, _, _ = run(tiny_config(), [batches[0]])
    state, metrics, _ = run(tiny_config(), batches[:2])
    assert not bool(metrics[1]["finite"]) and int(state.skipped) == 1 and int(state.bad_streak) == 1
    jax.tree.map(np.testing.assert_array_equal, state.params, state_ok.params)
    state, _, _ = run(tiny_config(), batches)
    assert int(state.bad_streak) == 0 and int(state.skipped) == 1


def test_gradient_accumulation_matches_full_batch():
    cfg = dict(optimizer="sgd", momentum=0.0, lr=0.1)
    full, m_full, _ = run(tiny_config(**cfg), make_batches(2))
    acc, m_acc, _ = run(tiny_config(accum_steps=4, **cfg), make_batches(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), full.params, acc.params)
    np.testing.assert_allclose(m_full[0]["loss"], m_acc[0]["loss"], rtol=1e-5)


def test_ema_follows_its_formula():
    state0, _, _ = run(tiny_config(ema=0.0), [])
    state1, _, _ = run(tiny_config(ema=0.9), make_batches(1))
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state0.params, state1.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), state1.ema_params, expected)


def test_batchnorm_statistics_and_dropout_are_updated():
    cfg = tiny_config()
    cfg.model.batchnorm, cfg.model.dropout = True, 0.5
    state0, _, _ = run(cfg, [])
    state, metrics, _ = run(cfg, make_batches(5))
    mean0 = state0.model_state["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(state.model_state["batch_stats"]["BatchNorm_0"]["mean"], mean0)
    assert np.isfinite(metrics[-1]["loss"])


def test_bf16_compute_keeps_fp32_parameters():
    state, metrics, _ = run(tiny_config(precision="bf16"), make_batches(40))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert metrics[-1]["loss"] < 0.2 * metrics[0]["loss"]


SHARD_SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from tiny_task import make_batches, run, tiny_config
assert jax.device_count() == 8, jax.device_count()
out = {}
for name, mesh in [("dp8", dict(data=8, fsdp=1)), ("fsdp4", dict(data=2, fsdp=4)), ("dp1", None)]:
    cfg = tiny_config(batch_size=16)
    cfg.model.features = 64
    if mesh is None:
        m = jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1],
                          axis_types=(jax.sharding.AxisType.Auto,) * 2)
    else:
        cfg.mesh.update(mesh); m = None
    state, metrics, _ = run(cfg, make_batches(5), mesh=m)
    out[name] = dict(loss=[float(x["loss"]) for x in metrics],
                     params=[np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)],
                     specs=[str(x.sharding.spec) for x in jax.tree.leaves(state.params)])
print(json.dumps(out))
"""


def test_shard_8_devices_match_1_device():
    """8 virtual CPU devices (data parallel and FSDP) give the loss and parameters of 1 device."""
    proc = run_python(["-c", SHARD_SCRIPT], devices=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any("fsdp" in s for s in out["fsdp4"]["specs"]), out["fsdp4"]["specs"]
    for name in ("dp8", "fsdp4"):
        np.testing.assert_allclose(out[name]["loss"], out["dp1"]["loss"], rtol=1e-5)
        for a, b in zip(out[name]["params"], out["dp1"]["params"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
