"""Preprocess a folder of brain scans: cleanup, crop, MUSICA, k-means cluster masks, report.

    python -m jaxdiff.preprocess --input DIR --output DIR [--method auto|otsu|adaptive] [--musica-alpha A ...]
        [--musica-levels 4] [--kmeans-k auto|N] [--k-min 2] [--k-max 20] [--size 256] [--quiet]

Writes the layout described in `jaxdiff.preprocess.batch` and prints one JSON line (counts, k, summary path).
A file that is not a readable image is reported on stderr (`skipped <file>: ...`) and skipped; a missing
input folder or a bad flag prints one `error:` line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from jaxdiff.errors import InputError, cli_errors


class _Parser(argparse.ArgumentParser):
    def error(self, message):                      # one line, exit 2 through cli_errors
        raise InputError(message)


def _k(value: str):
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 2:
        raise argparse.ArgumentTypeError(f"--kmeans-k {value!r}: expected auto or an integer >= 2")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    from jaxdiff.preprocess.batch import Options
    from jaxdiff.preprocess.crop import METHODS
    d = Options()
    p = _Parser(prog="python -m jaxdiff.preprocess", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="Folder of scans (searched recursively).")
    p.add_argument("--output", required=True, help="Output folder.")
    p.add_argument("--method", choices=METHODS, default=d.method, help="Crop threshold (auto: see crop.py).")
    p.add_argument("--pad", type=float, default=d.pad, help="Crop padding per side, fraction of the side.")
    p.add_argument("--blur", type=float, default=d.blur, help="Gaussian sigma (px) before thresholding.")
    p.add_argument("--white-level", type=float, default=d.white_level, help="Near-white level in [0, 1].")
    p.add_argument("--size", type=int, default=d.size, help="Output side in pixels.")
    p.add_argument("--musica-alpha", type=float, nargs="+", default=list(d.musica_alpha),
                   help="Detail gain: one value, or one per level (finest first).")
    p.add_argument("--musica-levels", type=int, default=d.musica_levels, help="Laplacian pyramid levels.")
    p.add_argument("--musica-power", type=float, default=d.musica_power, help="Detail exponent (1: linear).")
    p.add_argument("--kmeans-k", type=_k, default=None, help="Clusters: auto (chosen over --k-min..--k-max) or N.")
    p.add_argument("--k-min", type=int, default=d.k_range[0])
    p.add_argument("--k-max", type=int, default=d.k_range[1])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch", type=int, default=d.batch, help="Images per JAX batch.")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    return p


def options(args):
    """Parsed flags -> a checked `batch.Options` (InputError naming the flag otherwise)."""
    from jaxdiff.preprocess.batch import Options
    from jaxdiff.preprocess.musica import max_levels
    if args.size < 8:
        raise InputError(f"--size {args.size}: expected at least 8 pixels")
    if not 0 <= args.musica_levels <= max_levels(args.size, args.size):
        raise InputError(f"--musica-levels {args.musica_levels}: a {args.size}px image allows 0.."
                         f"{max_levels(args.size, args.size)}")
    if len(args.musica_alpha) not in (1, args.musica_levels):
        raise InputError(f"--musica-alpha: give one value or {args.musica_levels} (one per level)")
    if not 2 <= args.k_min <= args.k_max:
        raise InputError(f"--k-min {args.k_min} --k-max {args.k_max}: expected 2 <= k-min <= k-max")
    return Options(method=args.method, pad=args.pad, blur=args.blur, white_level=args.white_level, size=args.size,
                   musica_alpha=tuple(args.musica_alpha), musica_levels=args.musica_levels,
                   musica_power=args.musica_power, kmeans_k=args.kmeans_k, k_range=(args.k_min, args.k_max),
                   seed=args.seed, batch=max(1, args.batch))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with cli_errors():
        args = _parser().parse_args(argv)
        opts = options(args)
        from jaxdiff.preprocess.batch import process_folder
        summary = process_folder(args.input, args.output, opts, quiet=args.quiet)
        print(json.dumps({"processed": len(summary["files"]), "skipped": len(summary["skipped"]),
                          "k": summary["k"], "summary": os.path.join(args.output, "summary.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
