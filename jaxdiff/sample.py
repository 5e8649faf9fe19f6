# `python -m jaxdiff.sample`: the command lives in `jaxdiff.cli.sample` (its docstring has the usage).
import sys

from jaxdiff.cli.sample import *  # noqa: F401,F403  (the names that lived here)
from jaxdiff.cli.sample import __doc__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
