"""Prepare a config's data source once as a TFDS ArrayRecord data set (the pod-scale input path).

    python -m jaxdiff.prepare_data --config configs/NAME.py --out DATA_DIR [--config.data.x=...]

Writes DATA_DIR/jaxdiff_<source>/1.0.0/ (one ArrayRecord file per split) and prints the overrides that make a
run read it: `--config.data.source=tfds --config.data.root=DATA_DIR/jaxdiff_<source>`.
"""
from __future__ import annotations

import json
import os
import sys

from jaxdiff import config as config_lib, platform
from jaxdiff.errors import cli_errors


def _flags(fv):
    from absl import flags
    flags.DEFINE_string("out", None, "TFDS data_dir to write to (local folder or gs://).", flag_values=fv,
                        required=True)
    flags.DEFINE_bool("quiet", False, "No progress bar.", flag_values=fv)


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    with cli_errors():
        config, fv = config_lib.parse(argv, _flags)
        platform.setup(reexec=False, compilation_cache=False)
        from jaxdiff.data import arrayrecord
        counts = arrayrecord.prepare(config.data, fv.out, progress=not fv.quiet)
        root = os.path.join(fv.out, arrayrecord.dataset_name(config.data))
        print(json.dumps({"prepared": root, "examples": counts,
                          "train_overrides": f"--config.data.source=tfds --config.data.root={root}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
