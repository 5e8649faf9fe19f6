"""Old name of `configs/medsegdiff_lgg.py` (MedSegDiff as the LGG kaggle_3m notebook builds it), kept so that
command lines written before the rename still work; it loads that config with a one-line note."""
import warnings

from configs import medsegdiff_lgg


def get_config():
    warnings.warn("configs/medsegdiff_seed.py is the old name of configs/medsegdiff_lgg.py", FutureWarning,
                  stacklevel=2)
    return medsegdiff_lgg.get_config()
