"""Seed S4 preprocessing: cleanup, crop, CDFs, MUSICA, JAX k-means and k choice, colours, and the folder CLI."""
from __future__ import annotations

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import run_python
from jaxdiff.preprocess import cleanup, crop, kmeans, musica


def _head(h, w, cy, cx, r, seed=0, skull=0.8):
    """(h, w) uint8 synthetic scan: a grey disk of radius r with a brighter rim and a bright spot, on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - cy, xx - cx)
    img = np.where(d < r, 0.5, 0.0)
    img[(d < r) & (d > r - 3)] = skull
    img[np.hypot(yy - cy - r / 3, xx - cx) < r / 4] = 0.75
    img = np.clip(img + 0.02 * rng.standard_normal((h, w)), 0, 1)
    return (img * 255).astype(np.uint8)


def _write_scans(root):
    """Good files: RGB JPEG 60x80, grey JPEG 50x44, grey PNG 40x40, white-background PNG, white-bordered JPEG;
    bad files: a truncated JPEG and a text file named .jpg."""
    os.makedirs(root / "yes")
    os.makedirs(root / "no")
    rgb = lambda a: np.repeat(a[..., None], 3, axis=-1)
    Image.fromarray(rgb(_head(60, 80, 30, 40, 20))).save(root / "yes" / "rgb.jpg", quality=95)
    Image.fromarray(_head(50, 44, 25, 22, 16, seed=1)).save(root / "no" / "grey.jpg", quality=95)
    Image.fromarray(_head(40, 40, 20, 20, 12, seed=2)).save(root / "no" / "scan.png")
    white = rgb(_head(64, 64, 32, 32, 18, seed=3))
    white[np.hypot(*np.mgrid[-32:32, -32:32]) >= 19] = 255
    Image.fromarray(white).save(root / "yes" / "white.png")
    border = rgb(_head(64, 64, 32, 32, 18, seed=4))
    border[:4] = border[-4:] = border[:, :4] = border[:, -4:] = 250
    Image.fromarray(border).save(root / "yes" / "border.jpg", quality=95)
    buf = io.BytesIO()
    Image.fromarray(_head(64, 64, 32, 32, 20)).save(buf, format="JPEG")
    (root / "yes" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "no" / "notes.jpg").write_text("not an image\n")


@pytest.mark.slow
def test_cli_processes_good_files_and_reports_bad_ones(tmp_path):
    _write_scans(tmp_path / "in")
    out = tmp_path / "out"
    r = run_python(["-m", "jaxdiff.preprocess", "--input", str(tmp_path / "in"), "--output", str(out),
                    "--size", "32", "--musica-levels", "3", "--kmeans-k", "3", "--quiet"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["processed"] == 5
    bad = [line for line in r.stderr.splitlines() if line.startswith("skipped ")]
    assert len(bad) == 2 and "truncated.jpg" in bad[1] and "notes.jpg" in bad[0]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(s["file"] for s in summary["skipped"]) == ["no/notes.jpg", "yes/truncated.jpg"]
    assert set(summary["files"]) == {"no/grey.jpg", "no/scan.png", "yes/border.jpg", "yes/rgb.jpg", "yes/white.png"}
    for name in ("white", "border"):                      # background / frame gone, crop around the head
        entry = summary["files"][f"yes/{name}.{'png' if name == 'white' else 'jpg'}"]
        assert entry["white_pixels"] > 500
        r0, c0, r1, c1 = entry["box"]
        assert 8 <= r0 <= 15 and 8 <= c0 <= 15 and 49 <= r1 <= 56 and 49 <= c1 <= 56, entry["box"]
        cleaned = np.asarray(Image.open(out / "cleaned" / "yes" / f"{name}.png"))
        assert cleaned.shape == (32, 32, 3) and cleaned[0, 0].max() < 30
    assert np.asarray(Image.open(out / "cleaned" / "no" / "grey.png")).shape == (32, 32)   # grey stays grey
    mask = np.asarray(Image.open(out / "masks" / "yes" / "rgb.png"))
    colours = {tuple(c) for c in mask.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in kmeans.cluster_colours(3)} and len(colours) == 3
    assert summary["k"] == 3 and (out / "report.png").stat().st_size > 1000
    assert summary["files"]["yes/rgb.jpg"]["method"] == "otsu"


def test_cli_missing_input_is_one_line_exit_2(tmp_path, capsys):
    from jaxdiff.preprocess.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "nope" in err[0] and err[0].startswith("error:")
    with pytest.raises(SystemExit) as e:
        main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--size", "16", "--musica-levels", "6"])
    assert e.value.code == 2 and "--musica-levels" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_crop_box_of_a_disk():
    img = np.zeros((64, 96, 1), np.float32)
    yy, xx = np.mgrid[:64, :96]
    img[np.hypot(yy - 30, xx - 40) <= 15, 0] = 0.7
    c = crop.crop_to_brain(img, "auto", pad=0.0, blur=0.0)
    assert c.method == "otsu" and c.separability > 0.9
    assert c.box == (15, 25, 46, 56) and c.image.shape == (31, 31, 1)
    padded = crop.crop_to_brain(img, "otsu", pad=0.05, blur=0.0)
    assert padded.box == (10, 20, 51, 61)                          # round(0.05 * 96) = 5 px per side
    adaptive = crop.crop_to_brain(img, "adaptive", pad=0.0)
    assert adaptive.method == "adaptive"
    assert np.all(np.abs(np.subtract(adaptive.box, (15, 25, 46, 56))) <= 3), adaptive.box
    uneven = img + np.linspace(0.0, 0.6, 96, dtype=np.float32)[None, :, None] * (img == 0)   # lit from the right
    auto = crop.crop_to_brain(uneven, "auto", pad=0.0)
    assert auto.method == "adaptive" and crop.corner_spread(uneven[..., 0]) > crop.UNEVEN_CORNERS
    assert np.all(np.abs(np.subtract(auto.box, (15, 25, 46, 56))) <= 3), auto.box
    assert crop.crop_to_brain(uneven, "otsu", pad=0.0).box[3] == 96                  # Otsu takes the lit side
    blank = crop.crop_to_brain(np.zeros((8, 8, 3), np.float32))
    assert blank.method == "none" and blank.box == (0, 0, 8, 8)


def test_clean_background_keeps_bright_tissue_inside():
    img = np.ones((32, 32, 3), np.float32)                           # white background
    yy, xx = np.mgrid[:32, :32]
    head = np.hypot(yy - 16, xx - 16) < 10
    img[head] = 0.4
    img[14:18, 14:18] = 1.0                                          # white spot inside the head
    out, n = cleanup.clean_background(img)
    assert np.all(out[~head] == 0) and np.all(out[14:18, 14:18] == 1.0)
    ring = head & ~ndimage.binary_erosion(head, structure=np.ones((3, 3)))
    assert np.all(out[ring] == 0) and np.all(out[head & ~ring][..., 0] > 0)    # 3x3 dilation: one px ring
    assert n == int((out[..., 0] == 0).sum())
    everything, _ = cleanup.clean_background(img, border_only=False)
    assert np.all(everything[14:18, 14:18] == 0)


def test_channel_cdfs():
    img = np.zeros((4, 4, 3), np.float32)
    img[:2, :, 0] = 1.0
    img[:, :, 1] = 0.5
    cdf = cleanup.channel_cdfs(img, bins=4)
    np.testing.assert_allclose(cdf, [[0.5, 0, 1], [0.5, 0, 1], [0.5, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(cleanup.channel_percentiles(img, (50,))[0], [0.5, 0.5, 0.0])


def test_musica_identity_and_linear_gain():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 37, 20, 1))
    levels = musica.max_levels(37, 20)
    np.testing.assert_allclose(musica.musica(x, alpha=1.0, levels=levels, clip=False), x, atol=1e-5)
    pyr = jax.eval_shape(lambda v: musica.laplacian_pyramid(v, levels), x)
    assert [p.shape[1:3] for p in pyr] == [(37, 20), (19, 10), (10, 5), (5, 3)]
    two = musica.musica(x, alpha=2.0, levels=levels, clip=False) - x     # x + (alpha - 1) * details
    three = musica.musica(x, alpha=3.0, levels=levels, clip=False) - x
    np.testing.assert_allclose(three, 2 * two, atol=1e-4)
    assert float(jnp.abs(two).mean()) > 0.05
    with pytest.raises(ValueError, match="levels"):
        musica.laplacian_pyramid(x, levels + 1)


def _blobs(seed=0):
    """4 well-separated 2-D blobs of 100 points each: (400, 2) float32 and the true labels."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.1, 0.1], [0.2, 0.9], [0.6, 0.4], [0.9, 0.9]], np.float32)
    labels = np.repeat(np.arange(4), 100)
    return (means[labels] + 0.02 * rng.standard_normal((400, 2))).astype(np.float32), labels, means


def test_kmeans_recovers_clusters_and_metrics_match_sklearn():
    x, truth, means = _blobs()
    batch = np.stack([x, x[::-1]])
    centres, labels = kmeans.sort_by_intensity(*kmeans.fit(jax.random.PRNGKey(0), batch, k=4))
    order = np.argsort(means.mean(-1))
    np.testing.assert_allclose(centres[0], means[order], atol=0.01)
    np.testing.assert_array_equal(labels[0], np.argsort(order)[truth])
    np.testing.assert_array_equal(labels[1], labels[0][::-1])
    metrics = jax.jit(kmeans.cluster_metrics, static_argnames="silhouette_points")(
        jnp.asarray(x), centres[0], labels[0], 4, jax.random.PRNGKey(0), silhouette_points=400)
    tss = float(((x - x.mean(0)) ** 2).sum())
    np.testing.assert_allclose(float(metrics["wcss"] + metrics["bcss"]), tss, rtol=1e-4)
    from sklearn import metrics as metrics_sk  # installed with nilearn
    np.testing.assert_allclose(float(metrics["silhouette"]), metrics_sk.silhouette_score(x, labels[0]), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["calinski_harabasz"]),
                               metrics_sk.calinski_harabasz_score(x, labels[0]), rtol=1e-3)


def test_k_selection_picks_the_true_k():
    x, _, _ = _blobs(1)
    ks = tuple(range(2, 8))
    values = kmeans.k_curves(jax.random.PRNGKey(0), np.stack([x, x[::-1]]), ks=ks, silhouette_points=200)
    values = {n: np.asarray(v) for n, v in values.items()}
    assert all(v.shape == (2, len(ks)) for v in values.values())
    assert np.all(np.diff(values["wcss"], axis=1) <= 1e-3)             # WCSS does not grow with k
    assert np.all(np.argmax(values["silhouette"], axis=1) == 2)
    k, scores = kmeans.choose_k(values, ks)
    assert k == 4 and scores["mean"].shape == (len(ks),)


def test_cluster_colour_order():
    import matplotlib.colors as mcolors
    expected = [np.round(np.array(mcolors.to_rgb(n)) * 255) for n in kmeans.COLOUR_NAMES]
    np.testing.assert_array_equal(kmeans.cluster_colours(10), np.array(expected, np.uint8))
    assert kmeans.COLOUR_NAMES == ("black", "purple", "blue", "cyan", "lightblue", "green", "yellow", "pink",
                                   "orange", "red")
    four = kmeans.cluster_colours(4)
    assert tuple(four[0]) == (0, 0, 0) and tuple(four[-1]) == (255, 0, 0) and len({tuple(c) for c in four}) == 4
    assert len({tuple(c) for c in kmeans.cluster_colours(12)}) == 12
    centres = jnp.array([[[0.9], [0.1], [0.5]]])
    sorted_centres, labels = kmeans.sort_by_intensity(centres, jnp.array([[0, 1, 2]]))
    np.testing.assert_allclose(sorted_centres[0, :, 0], [0.1, 0.5, 0.9])
    mask = kmeans.colourise(labels[0], 3)
    np.testing.assert_array_equal(mask, kmeans.cluster_colours(3)[[2, 0, 1]])
