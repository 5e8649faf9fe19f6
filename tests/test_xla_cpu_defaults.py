"""jaxdiff's XLA:CPU defaults (jaxdiff/platform/, applied by `jaxdiff.platform.setup`) change speed, not results:
a UNet train step's loss and gradients with them equal those without, and the flags reach XLA_FLAGS only when allowed."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import run_python

SCRIPT = """
import json, os, sys
import jaxdiff.platform
jaxdiff.platform.setup(reexec=False, compilation_cache=False)  # as the command-line entry points do
import jax, jax.numpy as jnp, numpy as np
from configs import quickstart
from jaxdiff import tasks
c = quickstart.get_config()
c.model.update(dict(base_channels=8, channel_mults=(1, 2), attention_levels=(1,), groups=4))
c.data.image_size = 16
task = tasks.build(c)
x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 1)).astype(np.float32)
variables = task.init(jax.random.PRNGKey(0), {"image": x})
def loss(p):
    out = task.model.apply({"params": p}, x, jnp.array([1, 50, 300, 900]), None)
    return jnp.mean((out - x) ** 2)
value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "loss": float(value), "grads": flat[::97].tolist()}))
"""


def _run(defaults: str) -> dict:
    proc = run_python(["-c", SCRIPT], env_extra={"JAXDIFF_XLA_CPU_DEFAULTS": defaults, "XLA_FLAGS": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.long  # minutes on a 2-core host; in CI; `pytest -m "not long"` skips it locally
def test_cpu_defaults_change_flags_not_results():
    from jaxdiff import platform as jaxdiff
    on, off = _run("1"), _run("0")
    assert all(flag in on["flags"] for flag in jaxdiff.CPU_XLA_FLAGS)
    assert not any(flag.split("=")[0] in off["flags"] for flag in jaxdiff.CPU_XLA_FLAGS)
    assert on["loss"] > 0 and abs(on["loss"] - off["loss"]) <= 1e-6 * off["loss"]
    g_on, g_off = np.asarray(on["grads"]), np.asarray(off["grads"])
    assert np.abs(g_off).max() > 0
    np.testing.assert_allclose(g_on, g_off, rtol=0, atol=1e-5 * np.abs(g_off).max())


REEXEC = """
import os, sys
import jaxdiff.platform
print("argv", sys.argv[1:], os.environ.get("GLIBC_TUNABLES", ""), flush=True)
jaxdiff.platform.setup(compilation_cache=False)
print("kept", os.environ.get("GLIBC_TUNABLES", ""))
"""


def test_cli_reexec_adds_the_malloc_tunable_once_and_keeps_arguments():
    from jaxdiff import platform as jaxdiff
    proc = run_python(["-c", REEXEC, "--flag", "x y"], env_extra={"JAXDIFF_XLA_CPU_DEFAULTS": "1",
                                                                  "GLIBC_TUNABLES": "glibc.malloc.check=0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = f"glibc.malloc.check=0:{jaxdiff.MALLOC_TUNABLE}"
    # first run without the tunable (printed, then replaced), second run with it, which is kept
    assert proc.stdout.splitlines() == ["argv ['--flag', 'x y'] glibc.malloc.check=0",
                                        f"argv ['--flag', 'x y'] {both}", f"kept {both}"]
    off = run_python(["-c", REEXEC], env_extra={"JAXDIFF_XLA_CPU_DEFAULTS": "0", "GLIBC_TUNABLES": ""})
    assert off.stdout.splitlines() == ["argv [] ", "kept "]


FUSION = """
import json, os, subprocess, sys, warnings
from jaxdiff import platform
platform.setup({"xla_cpu_fusion": sys.argv[1] or None}, reexec=False, compilation_cache=False)
out = {"applied": platform.set_cpu_fusion(sys.argv[1] or None), "flags": os.environ.get("XLA_FLAGS", "")}
# a child process (a benchmark worker, the re-exec'd CLI) still tells jaxdiff's flags from the user's
child = subprocess.run([sys.executable, "-c", "from jaxdiff import platform; import os; "
                        "print(platform.set_cpu_fusion('dot'), os.environ['XLA_FLAGS'])"],
                       capture_output=True, text=True, check=True)
out["child"] = child.stdout.strip()
import jax
jax.numpy.zeros(1).block_until_ready()  # backends exist from here: a new choice is refused with a warning
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out["late"] = platform.set_cpu_fusion("dot,eltwise")
out["warning"] = str(caught[0].message) if caught else ""
print(json.dumps(out))
"""


def _fusion(types: str, xla_flags: str) -> dict:
    proc = run_python(["-c", FUSION, types], env_extra={"JAXDIFF_XLA_CPU_DEFAULTS": "1", "XLA_FLAGS": xla_flags,
                                                       "JAXDIFF_ADDED_XLA_FLAGS": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_config_cpu_fusion_replaces_the_default_but_not_the_users_flag():
    from jaxdiff import platform as jaxdiff
    flag = jaxdiff.YNN_FUSION_FLAG
    chosen = _fusion("dot,reduce", "--xla_cpu_enable_fast_math=false")
    assert chosen["applied"] is True
    assert chosen["flags"].split() == ["--xla_cpu_enable_fast_math=false", f"{flag}=dot,reduce"]
    assert chosen["child"] == f"True --xla_cpu_enable_fast_math=false {flag}=dot"
    assert chosen["late"] is False and "backends already exist" in chosen["warning"]
    default = _fusion("", "")
    assert default["applied"] is False and default["flags"].split() == list(jaxdiff.CPU_XLA_FLAGS)
    users = _fusion("dot,reduce", f"{flag}=dot")
    assert users["applied"] is False and users["flags"] == f"{flag}=dot"
    assert users["child"] == f"False {flag}=dot"


def test_entry_point_imports_leave_jax_unstarted_so_a_config_can_still_choose():
    """train / sample / evaluate apply `xla_cpu_fusion` after importing the training modules: importing them must
    not start JAX's backends (a module-level jnp computation would, and the choice would be ignored)."""
    script = ("import jaxdiff.train, jaxdiff.sample, jaxdiff.evaluate, jaxdiff.training.loop, "
              "jaxdiff.training.checkpoint, jaxdiff.tasks, jaxdiff.models\n"
              "from jax._src import xla_bridge\nprint(xla_bridge.backends_are_initialized())")
    proc = run_python(["-c", script], env_extra={"JAXDIFF_XLA_CPU_DEFAULTS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False"]


def test_unknown_fusion_type_is_a_one_line_error_naming_the_key(tmp_path):
    from jaxdiff import platform as jaxdiff
    from jaxdiff.errors import InputError
    before = dict(os.environ)
    with pytest.raises(InputError, match=r"config key xla_cpu_fusion: unknown fusion type 'elementwise'"):
        jaxdiff.setup({"xla_cpu_fusion": "dot,elementwise"}, reexec=False, compilation_cache=False)
    assert dict(os.environ) == before
    workdir = tmp_path / "run"
    proc = run_python(["-m", "jaxdiff.train", "--config", "configs/transformer_unet_tiny.py",
                       "--config.xla_cpu_fusion=dot,foo", "--workdir", str(workdir)])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config key xla_cpu_fusion: unknown fusion type 'foo' in 'dot,foo' (comma-separated, of dot, eltwise, "
        "reduce, individual_dot, individual_convolution)"]
    assert not workdir.exists()
