# `python -m jaxdiff.predict`: the command lives in `jaxdiff.cli.predict` (its docstring has the usage).
import sys

from jaxdiff.cli.predict import *  # noqa: F401,F403  (the names that lived here)
from jaxdiff.cli.predict import __doc__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
