# `python -m jaxdiff.train`: the command lives in `jaxdiff.cli.train` (its docstring has the usage).
import sys

from jaxdiff.cli.train import *  # noqa: F401,F403  (the names that lived here)
from jaxdiff.cli.train import __doc__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
