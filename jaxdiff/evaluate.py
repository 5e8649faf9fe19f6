# `python -m jaxdiff.evaluate`: the command lives in `jaxdiff.cli.evaluate` (its docstring has the usage).
import sys

from jaxdiff.cli.evaluate import *  # noqa: F401,F403  (the names that lived here)
from jaxdiff.cli.evaluate import __doc__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
