# `python -m jaxdiff.sam`: the command lives in `jaxdiff.cli.sam` (its docstring has the usage).
import sys

from jaxdiff.cli.sam import *  # noqa: F401,F403  (the names that lived here)
from jaxdiff.cli.sam import __doc__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
