"""Data: grain pipelines (`make_dataset`), the config-driven source factory (`get_source`) and sources
(`jaxdiff.data.sources`: built-in MNI152 brain phantom, BraTS)."""
from jaxdiff.data.check import check_data
from jaxdiff.data.pipeline import SOURCES, get_source, make_dataset

__all__ = ["SOURCES", "check_data", "get_source", "make_dataset"]
