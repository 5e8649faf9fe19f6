"""Multi-host start-up, now `jaxdiff.platform.distributed` (`jaxdiff.platform.setup(distributed=True)` calls it);
this name stays for existing callers."""
from jaxdiff.platform.distributed import initialize  # noqa: F401
