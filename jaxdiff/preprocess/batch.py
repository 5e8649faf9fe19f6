"""Preprocess a folder of scans: cleanup, crop, resize, MUSICA, k-means cluster masks, report
(the Kaggle brain-tumour toolkit's steps).

Output folder layout (relative paths of the input kept, extension .png):
  cleaned/<rel>.png    near-white background/frame set to black, cropped to the brain, padded to a centred
                       square and resized to size x size (the file's channels)
  enhanced/<rel>.png   MUSICA of the cleaned image
  masks/<rel>.png      colourised intensity clusters (cluster 0 = darkest = black, ..., red = brightest)
  labels/<rel>.png     the cluster index per pixel (uint8, sorted by intensity)
  report.png           first images: original with crop box, cleaned, MUSICA, clusters, channel CDFs
  k_selection.png      the four k-selection curves (with k = auto)
  cdfs.npz             per-file (256, C) channel CDFs of the cleaned image, keyed by relative path
  summary.json         per file: crop box, method, separability, white pixels removed, CDF percentiles;
                       k (and the curves when chosen); skipped files with the reason
A file that does not decode is reported (one line on stderr) and skipped; the batch goes on.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
from skimage import transform

from jaxdiff.errors import InputError
from jaxdiff.io import files
from jaxdiff.preprocess import cleanup, crop, imageio, kmeans, musica, report

REPORT_ROWS = 6


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings of `process_folder` (the command-line flags of `python -m jaxdiff.preprocess`)."""
    method: str = "auto"                  # crop threshold: auto, otsu, adaptive
    pad: float = 0.02                     # crop box padding per side, fraction of the longer side
    blur: float = 1.0                     # Gaussian sigma (px) before thresholding
    white_level: float = 0.92             # near-white threshold per channel, [0, 1]
    size: int = 256                       # output side in pixels
    musica_alpha: tuple = (1.5,)          # detail gain, one value or one per level (finest first)
    musica_levels: int = 4
    musica_power: float = 1.0
    kmeans_k: int | None = None           # None: choose over k_range
    k_range: tuple = kmeans.DEFAULT_K_RANGE
    k_sample: int = 4096                  # pixels per image used to choose k
    seed: int = 0
    batch: int = 16                       # images per JAX batch


def list_files(input_dir: str, skip_dir: str | None = None) -> list[str]:
    """Every non-hidden file under `input_dir` (relative paths, sorted), outside `skip_dir`."""
    skip = os.path.abspath(skip_dir) if skip_dir else None
    out = []
    for dirpath, dirnames, filenames in os.walk(input_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.abspath(os.path.join(dirpath, d)) != skip)
        out += [os.path.relpath(os.path.join(dirpath, f), input_dir) for f in filenames if not f.startswith(".")]
    return sorted(out)


def to_square(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w, C) -> (size, size, C) float32: zero-padded to a centred square, then resized (antialiased)."""
    h, w, c = image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.zeros((side, side, c), np.float32)
    square[top:top + h, left:left + w] = image
    out = transform.resize(square, (size, size, c), order=1, anti_aliasing=side > size, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def prepare(path: str, opts: Options) -> dict:
    """Decode, clean, crop and resize one file -> {"original", "cleaned" (S, S, C), "box", "method",
    "separability", "white_pixels"}. Raises InputError naming the file when it does not decode."""
    original = imageio.read_image(path)
    cleaned, white = cleanup.clean_background(original, opts.white_level)
    c = crop.crop_to_brain(cleaned, opts.method, opts.pad, opts.blur)
    return {"original": original, "cleaned": to_square(c.image, opts.size), "box": tuple(int(v) for v in c.box),
            "method": c.method, "separability": round(c.separability, 4), "white_pixels": white}


def _chunks(stack: np.ndarray, batch: int):
    """Yield (start, chunk) with every chunk padded (zeros) to one batch size: one compile for all."""
    b = min(batch, len(stack))
    for start in range(0, len(stack), b):
        chunk = stack[start:start + b]
        pad = np.zeros((b - len(chunk),) + chunk.shape[1:], chunk.dtype)
        yield start, np.concatenate([chunk, pad]) if len(pad) else chunk


def enhance(cleaned: np.ndarray, opts: Options) -> np.ndarray:
    """MUSICA of (N, S, S, 3) images in batches -> (N, S, S, 3) float32."""
    out = np.empty_like(cleaned)
    for start, chunk in _chunks(cleaned, opts.batch):
        res = musica.musica(chunk, alpha=np.asarray(opts.musica_alpha, np.float32), levels=opts.musica_levels,
                            power=opts.musica_power)
        out[start:start + len(chunk)] = np.asarray(res)[:len(cleaned) - start]
    return out


def select_k(grey: np.ndarray, opts: Options):
    """Choose k over opts.k_range on `k_sample` random pixels of each (N, P) grey image -> (k, info dict)."""
    import jax
    ks = tuple(range(opts.k_range[0], opts.k_range[1] + 1))
    rng = np.random.default_rng(opts.seed)
    idx = rng.choice(grey.shape[1], min(opts.k_sample, grey.shape[1]), replace=False)
    parts = []
    for start, chunk in _chunks(grey[:, idx, None], opts.batch):
        res = kmeans.k_curves(jax.random.PRNGKey(opts.seed), chunk, ks=ks)
        parts.append({n: np.asarray(v)[:len(grey) - start] for n, v in res.items()})
    values = {n: np.concatenate([p[n] for p in parts]) for n in kmeans.CURVES}
    k, scores = kmeans.choose_k(values, ks)
    info = {"ks": list(ks), "mean_curves": {n: values[n].mean(0).tolist() for n in kmeans.CURVES},
            "scores": {n: np.round(v, 4).tolist() for n, v in scores.items()}}
    return k, values, info


def cluster(grey: np.ndarray, k: int, opts: Options) -> np.ndarray:
    """K-means labels (N, P) int, sorted by intensity (0 = darkest), of (N, P) grey images, in batches."""
    import jax
    labels = np.empty(grey.shape, np.int32)
    for start, chunk in _chunks(grey[..., None], opts.batch):
        centres, lab = kmeans.fit(jax.random.PRNGKey(opts.seed), chunk, k=k)
        labels[start:start + len(chunk)] = np.asarray(kmeans.sort_by_intensity(centres, lab)[1])[:len(grey) - start]
    return labels


def _output_names(rels: list[str]) -> dict:
    """rel -> rel with a .png extension; a clash (a.jpg and a.png) keeps the full name: a.jpg.png."""
    out, used = {}, set()
    for rel in rels:
        name = os.path.splitext(rel)[0] + ".png"
        name = rel + ".png" if name in used else name
        used.add(name)
        out[rel] = name
    return out


def _load_all(input_dir: str, rels: list[str], opts: Options, quiet: bool):
    """prepare() every file with a progress bar -> (records by rel, skipped list)."""
    from tqdm.auto import tqdm
    records, skipped = {}, []
    for rel in tqdm(rels, desc="preprocess", disable=quiet, file=sys.stderr):
        try:
            records[rel] = prepare(os.path.join(input_dir, rel), opts)
        except InputError as e:
            tqdm.write(f"skipped {e}", file=sys.stderr)
            skipped.append({"file": rel, "reason": str(e)})
    return records, skipped


def _write_outputs(output_dir: str, records: dict, enhanced: np.ndarray, labels: np.ndarray, k: int) -> tuple:
    """Write the per-file PNGs and cdfs.npz -> (per-file summary entries, report rows)."""
    names, entries, rows, cdfs = _output_names(list(records)), {}, [], {}
    for i, (rel, r) in enumerate(records.items()):
        c = r["cleaned"].shape[-1]
        mask = kmeans.colourise(labels[i], k)
        for folder, image in (("cleaned", r["cleaned"]), ("enhanced", enhanced[i, ..., :c]), ("masks", mask),
                              ("labels", labels[i].astype(np.uint8))):
            imageio.write_png(os.path.join(output_dir, folder, names[rel]), image)
        cdfs[rel] = cleanup.channel_cdfs(r["cleaned"])
        entries[rel] = {
            "output": names[rel], "shape": list(r["original"].shape), "box": list(r["box"]),
            "method": r["method"], "separability": r["separability"], "white_pixels": r["white_pixels"],
            "percentiles": {"q": list(cleanup.PERCENTILES),
                            "values": np.round(cleanup.channel_percentiles(r["cleaned"]), 4).T.tolist()}}
        if len(rows) < REPORT_ROWS:
            rows.append({"name": rel, **r, "enhanced": enhanced[i, ..., :c], "mask": mask, "cdfs": cdfs[rel]})
    with files.open_write(os.path.join(output_dir, "cdfs.npz")) as f:
        np.savez_compressed(f, **cdfs)
    return entries, rows


def process_folder(input_dir: str, output_dir: str, opts: Options = Options(), quiet: bool = False) -> dict:
    """Preprocess every file under `input_dir` into `output_dir` (module docstring) -> the summary dict.

    Raises InputError when `input_dir` is missing or no file in it decodes."""
    if not os.path.isdir(input_dir):
        raise InputError(f"{input_dir}: input folder not found")
    records, skipped = _load_all(input_dir, list_files(input_dir, output_dir), opts, quiet)
    if not records:
        raise InputError(f"{input_dir}: no readable image files")
    rgb = np.stack([np.broadcast_to(r["cleaned"], r["cleaned"].shape[:2] + (3,)) for r in records.values()])
    enhanced = enhance(rgb, opts)
    grey = enhanced.mean(-1).reshape(len(records), -1)
    k, values, selection = (opts.kmeans_k, None, None) if opts.kmeans_k else select_k(grey, opts)
    labels = cluster(grey, k, opts).reshape(len(records), opts.size, opts.size)
    entries, rows = _write_outputs(output_dir, records, enhanced, labels, k)
    report.save_overview(os.path.join(output_dir, "report.png"), rows)
    if values is not None:
        report.save_k_curves(os.path.join(output_dir, "k_selection.png"), selection["ks"], values, k)
    summary = {"input": input_dir, "output": output_dir, "options": dataclasses.asdict(opts), "k": k,
               "k_selection": selection, "files": entries, "skipped": skipped}
    files.write_text(os.path.join(output_dir, "summary.json"), files.strict_json(summary, indent=1))
    return summary
