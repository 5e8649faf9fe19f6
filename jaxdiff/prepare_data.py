# `python -m jaxdiff.prepare_data`: the command lives in `jaxdiff.cli.prepare_data` (its docstring has the usage).
import sys

from jaxdiff.cli.prepare_data import *  # noqa: F401,F403  (the names that lived here)
from jaxdiff.cli.prepare_data import __doc__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
