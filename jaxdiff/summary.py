# `python -m jaxdiff.summary`: the command lives in `jaxdiff.cli.summary` (its docstring has the usage).
# `count` and `table` are `jaxdiff.models.params`'s.
import sys

from jaxdiff.cli.summary import *  # noqa: F401,F403  (the names that lived here)
from jaxdiff.cli.summary import __doc__, main  # noqa: F401
from jaxdiff.models.params import count, table  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
