"""Train (or resume) an experiment.

    python -m jaxdiff.train --config configs/NAME.py [--workdir DIR] [--config.a.b=value ...] [--json]
    python -m jaxdiff.train --config configs/NAME.py --help     (flags, and the config's keys and values)

On a CPU the process gets one XLA device per core (`--cpu_devices`): the train step runs on the first, in-run
sampling and evaluation split their batches over all (`jaxdiff.platform.set_cpu_devices`). Re-running the same command
resumes from the latest checkpoint in DIR. Bad input (unknown config key, missing data folder, corrupt file)
prints one `error:` line and exits with status 2; so does a --workdir that is a file, lies under a file or
cannot be written, before any set-up. At the end it prints a short table (the split scored and its number of
cases, headline metrics, figure paths); the full report is in DIR/report.json (`--json` prints it instead).
"""
from __future__ import annotations

import os
import sys

from jaxdiff import cli, platform
from jaxdiff import config as config_lib
from jaxdiff.errors import cli_errors


def _flags(fv):
    from absl import flags
    flags.DEFINE_string("workdir", None, "Work directory (default runs/<config name>).", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress bar.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the end-of-run report as one JSON line (for scripts) instead of the "
                      "table.", flag_values=fv)
    flags.DEFINE_bool("distributed", False, "Join a multi-host run first (jax.distributed.initialize; auto on TPU "
                      "VMs and SLURM, else JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).",
                      flag_values=fv)
    flags.DEFINE_integer("cpu_devices", None, "XLA CPU devices that in-run sampling and evaluation split their "
                         "batches over (0 or unset: one per core; 1: one device); the train step runs on the first. "
                         "CPU backend, single process only.", flag_values=fv)


def main(argv=None) -> int:
    reexec = cli.own_argv(argv)
    argv = list(sys.argv if argv is None else argv)
    with cli_errors():
        config, fv = config_lib.parse(argv, _flags)
        cfg_name = os.path.splitext(os.path.basename(config_lib.split_config_arg(argv)[0]))[0]
        workdir = fv.workdir or os.path.join("runs", cfg_name)
        config_lib.check_output_dir(workdir, "--workdir")
        platform.setup(config, cpu_devices=cli.cpu_devices(fv.cpu_devices), distributed=fv.distributed,
                       reexec=reexec)
        from jaxdiff import experiment
        report = experiment.run(config, workdir, quiet=fv.quiet)
        from jaxdiff.io import files
        import jax
        if fv.json:
            print(files.strict_json(report))
        elif jax.process_index() != 0 and "stopped_at" not in report:  # the report is process 0's
            print(f"train {workdir}: step {report.get('step')} (process {jax.process_index()}; process 0 prints "
                  "and writes the report)")
        else:
            from jaxdiff.reporting import format_report
            print(format_report(report, f"train {workdir}", json_path=os.path.join(workdir, "report.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
