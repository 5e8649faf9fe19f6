"""Every config key with its default, in one place: the base that configs/*.py derive from and `config.parse` fills.

A config is a `ml_collections.ConfigDict` with the top-level keys `seed`, `task`, `xla_cpu_fusion` and the sections
`model`, `data`, `train`, `mesh`, and as the task needs them `diffusion`, `sample`, `eval`, `loss`, `error_head`.

- `SECTIONS` holds the keys with one default everywhere. A config file states only what differs from them
  (`c = config_defaults.get_config("data", "train", "mesh")`, then the changes), and `fill` adds the ones a config
  lacks to every section it has (a config file, a command line's config, an old work directory's config.json).
- `READ_KEYS` holds the keys whose default depends on the data source, task or model: they are never filled; the
  comment says which default applies where. Every field of the model class named by `model.name` is a `model` key
  with the class's default (`jaxdiff.config.model_fields`).
- `RENAMED` maps names written by earlier versions (config values and keys) to today's: `upgrade` reads them with a
  one-line `FutureWarning` and writes the new name.

`python -m jaxdiff.summary --config FILE --keys` lists a config's keys with their values, then the `READ_KEYS` it
leaves out.
"""
from __future__ import annotations

import warnings

import ml_collections

# Keys every config must state (no default): task, model.name, data.source, train.steps, train.batch_size,
# train.lr; for diffusion tasks diffusion.schedule and diffusion.num_timesteps.

TOP = dict(
    seed=0,                        # seed of parameter initialisation, noise and shuffling
    xla_cpu_fusion="",             # XLA:CPU fusion types for YNNPACK ("" = jaxdiff's default set)
)

TRAIN = dict(
    accum_steps=1,                 # micro-batches accumulated per optimiser step
    optimizer="adamw",             # adamw, adam or sgd
    b1=0.9,                        # adam/adamw first-moment decay
    b2=0.999,                      # adam/adamw second-moment decay
    momentum=0.9,                  # sgd's momentum
    weight_decay=0.0,              # adamw's decoupled weight decay
    lr_schedule="cosine",          # cosine or constant
    warmup_steps=0,                # linear learning-rate warmup
    final_lr_fraction=0.0,         # cosine schedule ends at lr * this
    grad_clip=0.0,                 # global-norm gradient clipping (0: off)
    ema=0.0,                       # EMA decay of the parameters (0: off; evaluation then uses the raw ones)
    precision="fp32",              # fp32 or bf16 compute
    trainable=(),                  # regexes of trained parameter names (() = all); others frozen
    freeze_batch_stats=True,       # with train.trainable: frozen BatchNorm layers use running statistics
    label_smoothing=0.0,           # classification: label smoothing of the cross-entropy
    class_weights=None,            # classification: None / "" (unweighted), "balanced", or K numbers
    init_from="",                  # classification: pretrained weights to start from ("" = random init)
    init_head=False,               # classification: also load the checkpoint's classifier head
    log_every=50,                  # steps between metrics.jsonl rows
    ckpt_every=1000,               # steps between checkpoints
    keep_checkpoints=3,            # checkpoints kept
    max_bad_steps=20,              # non-finite steps in a row that stop the run
)

MESH = dict(
    data=-1,                       # devices on the data axis (-1: those fsdp leaves)
    fsdp=1,                        # devices a parameter is sharded over
    fsdp_min_size=2 ** 14,         # parameters with fewer elements are replicated, not sharded
)

DATA = dict(
    root="",                       # data set folder (built-in phantom sources need none)
    num_workers=0,                 # grain worker processes
    split="random",                # case split: "random" (by data.seed and data.fractions),
                                   # "brats_250_73_45" (the transformer-UNet segmenter's BraTS2020 case split),
                                   # "lgg_3536_393" (lgg: MedSegDiff notebook's stratified slice split)
    fractions=(0.8, 0.1, 0.1),     # (train, val, test) fractions of a random split
    stratified=True,               # lgg_3536_393: stratify on has-tumour
    slices=None,                   # BraTS: axial slice indices per case, (60, 80), or "linspace_70_100_10"
                                   # (10 slices at linspace(70, 100, 10)); None: every slice
    normalise="volume_max",        # BraTS: "volume_max" (v / max v) or "zscore", per volume and modality
    exclude_cases=None,            # case names every file source leaves out (a tuple of names, or one name)
    skip_bad_cases=False,          # skip cases that fail the start-up data check (with a warning), not stop
    regions=None,                  # "brats": one mask channel per nested region (WT, TC, ET); None: whole tumour
    tumour_only=False,             # phantom: only slices through a tumour
    dims=2,                        # 2 (slices) or 3 (volumes)
    patch_size=None,               # 3D: train on random patches of this shape (None: whole volumes)
    patches_per_volume=8,          # 3D patches drawn from one volume in a row
    augment=False,                 # training augmentation of the transformer-UNet segmenter (flips, rot90,
                                   # brightness/contrast, elastic), training split only
    clahe=False,                   # CLAHE contrast equalisation (clip 2.0, 8x8 tiles) on every split
    faithful_augment_test=False,   # also augment val/test, as the original transformer-UNet pipeline did
    input_norm="none",             # classification: "none" or "imagenet" mean/std of the input
    balance="none",                # image_folder: "none", "weights" (class-weighted loss) or "oversample"
    plane="coronal",               # mrnet: sagittal, coronal or axial
    label="abnormal",              # mrnet: abnormal, acl or meniscus
    slices_per_exam=5,             # mrnet: central slices taken from each exam
)

DIFFUSION = dict(
    prediction="eps",              # what the denoiser predicts: eps, x0 or v
    loss="mse",                    # mse or l1 on the prediction
    min_snr_gamma=0.0,             # Min-SNR loss weighting gamma (0: off)
    cond_drop=0.1,                 # probability of dropping the label (classifier-free guidance)
    sampler="ddim",                # ddim, ddpm or dpm++ (DPM-Solver++, Lu et al. 2022)
    dpm_order=2,                   # DPM-Solver++ order: 2 (2M), 3 (3M) or 1
    sample_steps=50,               # sampling steps
    eta=0.0,                       # DDIM eta (0: deterministic)
    clip_x0=1.0,                   # clip the x0 estimate to [-clip_x0, clip_x0] (0: off)
    guidance_scale=0.0,            # classifier-free guidance scale (0: off)
    ensemble=5,                    # segmentation: samples fused per image
    fusion="mean",                 # segmentation: how the ensemble is fused
    low_res_noise=0.0,             # super-resolution: max noise-conditioning augmentation in training (0: off)
    residual=False,                # super-resolution: diffuse high-res minus the upsampled low-res
)

SAMPLE = dict(
    num=16,                        # samples written at the end of a run / by `sample`
    whole_volume=False,            # 3D: sample whole volumes instead of patches
    kid=False,                     # score KID of the samples against the data
    kid_features="in_project",     # feature extractor for KID
    kid_weights="",                # its weights file ("" = random features)
    kid_image_size=75,             # images resized to this side for the extractor
    kid_num=64,                    # samples scored
    kid_steps=5,                   # sampling steps for KID
)

EVAL = dict(
    num_examples=None,             # examples scored (None: the whole split)
)

LOSS = dict(
    error_weight=0.5,              # segmentation: weight of the VAE error head's reconstruction loss
    kl_weight=0.0,                 # segmentation: KL weight of the VAE error head
    dice_weight=0.0,               # segmentation: weight of the soft Dice term added to BCE / cross-entropy
)

SECTIONS = {"": TOP, "train": TRAIN, "mesh": MESH, "data": DATA, "diffusion": DIFFUSION, "sample": SAMPLE,
            "eval": EVAL, "loss": LOSS}

# Keys read with a default that depends on the data source, task or model (never filled in): "section.key" ->
# where which default applies.
READ_KEYS = {
    "data.image_size": "phantom 64, phantom3d 32, brats 240, lgg 32, mrnet 256, image_folder 224, mask_folder 64, "
                       "ixi (160, 192, 160)",
    "data.channels": "classification, image_folder and promptable_segmentation 3; else 1",
    "data.modality": "phantom and brats 't2', phantom3d 't1'",
    "data.seed": "brats and lgg 42 (the originals' random_state), else 0",
    "data.num_cases": "phantom sources: 64",
    "data.slices_per_case": "phantom: 8",
    "data.tumour_fraction": "phantom sources: 0.8 of the cases hold a tumour",
    "data.low_res_size": "super_resolution: required (the low-res input's side; divides data.image_size)",
    "data.spacing": "ixi: (1.0, 1.0, 1.0) mm",
    "data.clip_percentiles": "ixi: (0.5, 99.5)",
    "diffusion.beta_start": "the schedule's own",
    "diffusion.beta_end": "the schedule's own",
    "diffusion.low_res_noise_sample": "super-resolution: low_res_noise / 2",
    "diffusion.timestep_spacing": "the timesteps DDIM / DPM-Solver++ visit: dpm++ logsnr, ddim uniform",
    "eval.batch_size": "classification and prediction 16, promptable_segmentation 2",
    "eval.num_cases": "segmentation: absent reads eval.num_examples as cases; None scores every case",
}

# Names written by earlier versions -> today's. Values: ("section.key", old value) -> new value. Keys: old dotted
# key -> new dotted key.
RENAMED_VALUES = {
    ("data.split", "seed_s0"): "brats_250_73_45",
    ("data.split", "seed_s1"): "lgg_3536_393",
    ("data.slices", "seed_s0"): "linspace_70_100_10",
}
RENAMED_KEYS: dict[str, str] = {}


class RenamedWarning(FutureWarning):
    """A config used a name that an earlier version wrote; it was read as today's name."""


def renamed_value(dotted: str, value):
    """`value` of config key `dotted` under today's name (a `RenamedWarning` when it had an old one)."""
    new = RENAMED_VALUES.get((dotted, value)) if isinstance(value, str) else None
    if new is None:
        return value
    warnings.warn(f"config key {dotted}: {value!r} is the old name of {new!r}; read as {new!r}", RenamedWarning,
                  stacklevel=2)
    return new


def get_config(*sections: str) -> ml_collections.ConfigDict:
    """The base config: the top-level defaults and each named section (of `SECTIONS`) with its defaults; other
    sections start empty when named (`model`, `error_head`)."""
    c = ml_collections.ConfigDict(dict(TOP))
    for name in sections:
        c[name] = ml_collections.ConfigDict(dict(SECTIONS.get(name, {})))
    return c


def upgrade(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` (changed in place) with old key names and values read as today's, one note for each."""
    with config.unlocked():
        for old, new in RENAMED_KEYS.items():
            *sections, key = old.split(".")
            node = _node(config, sections)
            if node is not None and key in node:
                warnings.warn(f"config key {old} is the old name of {new}; read as {new}", RenamedWarning,
                              stacklevel=2)
                *new_sections, new_key = new.split(".")
                target = _node(config, new_sections)
                if target is not None and new_key not in target:
                    target[new_key] = node[key]
                del node[key]
        for dotted in dict.fromkeys(k for k, _ in RENAMED_VALUES):
            *sections, key = dotted.split(".")
            node = _node(config, sections)
            if node is not None and key in node and isinstance(node[key], str):
                node[key] = renamed_value(dotted, node[key])
    return config


def fill(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` (old names upgraded) with every `SECTIONS` default it lacks, in the sections it has (no
    section is added)."""
    config = upgrade(ml_collections.ConfigDict(config.to_dict()))
    for section, defaults in SECTIONS.items():
        node = config if not section else config.get(section)
        if not isinstance(node, ml_collections.ConfigDict):
            continue
        for key, default in defaults.items():
            if key not in node:
                node[key] = default
    return config


def defaults_of(section: str) -> dict:
    """{key: default} of `section` ("" for the top level)."""
    return dict(SECTIONS.get(section, {}))


def _node(config, sections):
    node = config
    for part in sections:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    return node if isinstance(node, ml_collections.ConfigDict) else None


def renamed_names(module_globals: dict, renamed: dict):
    """A module `__getattr__` serving the old Python names in `renamed` ({old: new}) of the module whose globals
    are `module_globals`, each with a one-line FutureWarning; other names raise AttributeError."""
    module = module_globals["__name__"]

    def getattr_(name):
        if name in renamed:
            warnings.warn(f"{module}.{name} is the old name of {renamed[name]}", FutureWarning, stacklevel=2)
            return module_globals[renamed[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return getattr_
