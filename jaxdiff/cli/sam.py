"""Segment Anything on your own images with a checkpoint you give (nothing is downloaded).

One image, point and/or box prompts (pixel coordinates of the original image; labels 1 = object, 0 = not):
    python -m jaxdiff.sam --checkpoint sam_vit_b_01ec64.pth --image I.png --points 120,88[;140,90] \
        [--labels 1,0] [--box x0,y0,x1,y1] [--out DIR]
  writes DIR/mask_best.png (highest predicted IoU), DIR/mask_0..2.png, DIR/scores.json and DIR/overlay.png.

Pseudo-masks for a folder, one positive point per image:
    python -m jaxdiff.sam --checkpoint F --input-dir D --output-dir O [--prompt center|brightest-cluster]
  writes O/images/NAME.png, O/masks/NAME.png (0/255, the best-IoU mask) and O/prompts.json, the layout of the
  `mask_folder` data source: train a segmenter on it with
  `python -m jaxdiff.train --config configs/transformer_unet_tiny.py --config.data.source=mask_folder
  --config.data.root=O`. "brightest-cluster" is the pixel of the brightest k-means intensity cluster
  (k = --clusters, default 10; fitted on a 64x64 copy) nearest to that cluster's centre of mass.

The checkpoint is the official `sam_vit_b_01ec64.pth` or a Hugging Face `facebook/sam-vit-base` folder or
model.safetensors (ViT-L/H files work too: the architecture is read from the weights). Bad input (no or
unreadable checkpoint, bad prompt, unreadable image) prints one `error:` line and exits with status 2; in batch
mode an unreadable image is reported on stderr and skipped.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
from PIL import Image, ImageDraw

from jaxdiff import platform
from jaxdiff.errors import InputError, cli_errors
from jaxdiff.io import files
from jaxdiff.models.sam import model as sam_model
from jaxdiff.models.sam.port import NEEDED, load_checkpoint
from jaxdiff.preprocess import kmeans
from jaxdiff.preprocess.imageio import read_image, write_png

PROMPTS = ("center", "brightest-cluster")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxdiff.sam", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="sam_vit_b_01ec64.pth, or a Hugging Face sam-vit-base folder/safetensors")
    p.add_argument("--image", help="one image (single mode)")
    p.add_argument("--points", help="x,y[;x,y...] pixel coordinates in the original image")
    p.add_argument("--labels", help="1,0,... one per point (default all 1)")
    p.add_argument("--box", help="x0,y0,x1,y1 pixel box in the original image")
    p.add_argument("--out", default="sam_out", help="output folder (single mode)")
    p.add_argument("--input-dir", help="folder of images (batch mode)")
    p.add_argument("--output-dir", help="pseudo-mask folder to write (batch mode)")
    p.add_argument("--prompt", default="brightest-cluster", choices=PROMPTS, help="batch-mode point prompt")
    p.add_argument("--clusters", type=int, default=10, help="k of the brightest-cluster prompt")
    return p


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} {text!r}: expected comma-separated numbers") from None


def parse_prompts(points: str | None, labels: str | None, box: str | None):
    """CLI strings -> (points (N, 2) float32 or None, labels (N,) int32 or None, box (4,) float32 or None)."""
    pts = lab = bx = None
    if points:
        v = _numbers(points, "--points")
        if len(v) % 2 or not v:
            raise InputError(f"--points {points!r}: expected x,y[;x,y...]")
        pts = np.asarray(v, np.float32).reshape(-1, 2)
        lab = np.ones(len(pts), np.int32) if not labels else np.asarray(_numbers(labels, "--labels"), np.int32)
        if len(lab) != len(pts) or not np.all(np.isin(lab, (0, 1))):
            raise InputError(f"--labels {labels!r}: expected one 0 or 1 per point ({len(pts)} points)")
    elif labels:
        raise InputError("--labels given without --points")
    if box:
        v = _numbers(box, "--box")
        if len(v) != 4 or v[2] <= v[0] or v[3] <= v[1]:
            raise InputError(f"--box {box!r}: expected x0,y0,x1,y1 with x1 > x0 and y1 > y0")
        bx = np.asarray(v, np.float32)
    if pts is None and bx is None:
        raise InputError("no prompt: give --points and/or --box")
    return pts, lab, bx


def require_checkpoint(checkpoint: str | None) -> str:
    """The --checkpoint value; InputError saying which file is needed when it is not given or absent."""
    if not checkpoint:
        raise InputError(f"--checkpoint missing: need {NEEDED}")
    if not os.path.exists(checkpoint):
        raise InputError(f"{checkpoint}: SAM checkpoint not found; need {NEEDED}")
    return checkpoint


class Segmenter:
    """A loaded SAM with its two jitted functions: `segment(image, points, labels, box)` embeds the image
    once (ViT, compiled once for the fixed input size) and decodes the prompt (compiled once per prompt shape)."""

    def __init__(self, checkpoint: str | None):
        self.model, self.variables = load_checkpoint(require_checkpoint(checkpoint))
        self.embed, self.prompt = sam_model.jitted_fns(self.model)

    def segment(self, image: np.ndarray, points=None, labels=None, box=None) -> dict:
        """image (H, W, 3) uint8; points (N, 2) / labels (N,) / box (4,) in original pixels ->
        {"logits": (K, H, W) float32, "iou": (K,) float32} with K = 3 (multimask output)."""
        s, (h, w) = self.model.image_size, image.shape[:2]
        x, resized = sam_model.preprocess(image, s)
        emb = self.embed(self.variables, x[None])
        pts = None if points is None else sam_model.to_input_coords(points, (h, w), resized)[None]
        bx = None if box is None else sam_model.to_input_coords(box.reshape(2, 2), (h, w), resized).reshape(1, 4)
        low, iou = self.prompt(self.variables, emb, pts, None if labels is None else labels[None], bx)
        logits = sam_model.postprocess_masks(low, resized, (h, w), s)
        return {"logits": np.asarray(logits[0]).transpose(2, 0, 1), "iou": np.asarray(iou[0])}


def _uint8_rgb(image01: np.ndarray) -> np.ndarray:
    """(H, W, C) float in [0, 1] -> (H, W, 3) uint8."""
    a = (np.clip(image01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a[..., :3]


def overlay(image: np.ndarray, mask: np.ndarray, points=None, labels=None, box=None) -> np.ndarray:
    """(H, W, 3) uint8 with the mask tinted red at 45%, points as green (1) / red (0) dots and the box in yellow."""
    out = image.astype(np.float32)
    out[mask] = 0.55 * out[mask] + 0.45 * np.array([255.0, 40.0, 40.0])
    img = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = max(2, round(max(image.shape[:2]) / 100))
    for (x, y), lab in zip(points if points is not None else [], labels if labels is not None else []):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(0, 255, 0) if lab == 1 else (255, 0, 0), outline="white")
    if box is not None:
        draw.rectangle(tuple(float(v) for v in box), outline=(255, 255, 0), width=max(1, r // 2))
    return np.asarray(img)


def centre_point(image01: np.ndarray) -> np.ndarray:
    """The image centre (x, y) in pixels, (2,)."""
    h, w = image01.shape[:2]
    return np.array([(w - 1) / 2.0, (h - 1) / 2.0], np.float32)


def brightest_cluster_point(image01: np.ndarray, k: int = 10, grid: int = 64, seed: int = 0) -> np.ndarray:
    """The brain-tumour toolkit's prompt: k-means (jaxdiff.preprocess.kmeans) of the grey intensities of a
    grid x grid copy,
    clusters sorted by intensity; the brightest cluster's pixel nearest its centre of mass, as (x, y) in
    original pixels, (2,)."""
    h, w = image01.shape[:2]
    grey = np.asarray(Image.fromarray(image01.mean(-1).astype(np.float32)).resize((grid, grid), Image.BILINEAR))
    centres, labels = kmeans.fit(jax.random.PRNGKey(seed), grey.reshape(1, -1, 1), k)
    _, labels = kmeans.sort_by_intensity(centres, labels)
    yy, xx = np.nonzero(np.asarray(labels[0]).reshape(grid, grid) == k - 1)
    if not len(yy):                  # k larger than the distinct intensities: take the brightest pixels
        yy, xx = np.nonzero(grey >= grey.max())
    near = np.argmin((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2)
    return np.array([(xx[near] + 0.5) * w / grid - 0.5, (yy[near] + 0.5) * h / grid - 0.5], np.float32)


def _write_masks(out_dir: str, image: np.ndarray, result: dict, points, labels, box) -> dict:
    masks = result["logits"] > 0.0
    best = int(np.argmax(result["iou"]))
    for i, m in enumerate(masks):
        write_png(os.path.join(out_dir, f"mask_{i}.png"), m.astype(np.uint8) * 255)
    write_png(os.path.join(out_dir, "mask_best.png"), masks[best].astype(np.uint8) * 255)
    write_png(os.path.join(out_dir, "overlay.png"), overlay(image, masks[best], points, labels, box))
    scores = {"iou": result["iou"].tolist(), "best": best, "area": [int(m.sum()) for m in masks],
              "points": None if points is None else points.tolist(),
              "labels": None if labels is None else labels.tolist(), "box": None if box is None else box.tolist()}
    files.write_text(os.path.join(out_dir, "scores.json"), files.strict_json(scores, indent=2))
    return scores


def run_single(args) -> dict:
    """Single-image mode; returns the scores written to scores.json."""
    points, labels, box = parse_prompts(args.points, args.labels, args.box)
    image = _uint8_rgb(read_image(args.image))
    segmenter = Segmenter(args.checkpoint)
    return _write_masks(args.out, image, segmenter.segment(image, points, labels, box), points, labels, box)


def run_batch(args) -> dict:
    """Folder mode: one point prompt per image -> mask_folder layout; returns a summary."""
    if not os.path.isdir(args.input_dir):
        raise InputError(f"{args.input_dir}: --input-dir folder not found")
    names = sorted(f for f in os.listdir(args.input_dir)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not names:
        raise InputError(f"{args.input_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    segmenter = Segmenter(args.checkpoint)
    prompts, skipped = {}, []
    for f in names:
        try:
            image01 = read_image(os.path.join(args.input_dir, f))
        except InputError as e:
            print(f"skipped: {e}", file=sys.stderr)
            skipped.append(f)
            continue
        image = _uint8_rgb(image01)
        point = centre_point(image01) if args.prompt == "center" else brightest_cluster_point(image01, args.clusters)
        result = segmenter.segment(image, point[None], np.ones(1, np.int32))
        best = int(np.argmax(result["iou"]))
        stem = os.path.splitext(f)[0]
        write_png(os.path.join(args.output_dir, "images", stem + ".png"), image)
        write_png(os.path.join(args.output_dir, "masks", stem + ".png"),
                  (result["logits"][best] > 0).astype(np.uint8) * 255)
        prompts[stem] = {"point": point.tolist(), "iou": float(result["iou"][best])}
    files.write_text(os.path.join(args.output_dir, "prompts.json"),
                     files.strict_json({"prompt": args.prompt, "images": prompts, "skipped": skipped}, indent=2))
    return {"written": len(prompts), "skipped": len(skipped), "output_dir": args.output_dir}


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv[1:])
    with cli_errors():
        require_checkpoint(args.checkpoint)
        platform.setup(reexec=False, compilation_cache=False)  # the XLA:CPU defaults
        if args.input_dir or args.output_dir:
            if not (args.input_dir and args.output_dir) or args.image:
                raise InputError("batch mode needs --input-dir and --output-dir (and no --image)")
            print(files.strict_json(run_batch(args)))
        elif args.image:
            print(files.strict_json(run_single(args)))
        else:
            raise InputError("give --image (single mode) or --input-dir and --output-dir (batch mode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
