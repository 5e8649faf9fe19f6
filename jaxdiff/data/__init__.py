"""Data: grain pipelines (`make_dataset`), the config-driven source factory (`get_source`) and sources
(`jaxdiff.data.sources`: built-in MNI152 brain phantom, BraTS)."""
from jaxdiff.data.pipeline import SOURCES, get_source, make_dataset

__all__ = ["SOURCES", "get_source", "make_dataset"]
