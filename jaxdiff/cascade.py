"""`python -m jaxdiff.sample --cascade ...`: the cascade lives in `jaxdiff.cli.cascade`; its names stay here."""
from jaxdiff.cli.cascade import load_stages, parse_steps, run, save_stage  # noqa: F401
