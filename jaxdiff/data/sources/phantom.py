"""Built-in deterministic brain phantom on the real MNI152 2009 T1 template shipped inside nilearn.

Nothing is downloaded: nilearn's 1 mm template (197 x 233 x 189), its grey/white-matter maps and brain mask
are read once per process, pre-filtered and resampled to the phantom voxel size, and cached.

A case (`make_case`) is a subject drawn deterministically from (seed, index):
- anatomy: the template pulled through a random affine (rotations up to 4 degrees per axis, scale +-5% per
  axis, shift up to 4 mm, about the brain centre) plus a smooth elastic displacement (about 2 mm rms);
- contrasts (the four BraTS modalities): T1-like = the template intensities (WM ~0.9, GM ~0.6, CSF ~0.25);
  T1ce (post-contrast) = the same healthy tissue; T2-like and FLAIR-like from the tissue maps (T2: WM 0.3,
  GM 0.55, CSF 1.0; FLAIR, fluid suppressed: WM 0.5, GM 0.65, CSF 0.08; CSF = brain mask - GM - WM);
- a tumour in `tumour_fraction` of the cases (default 0.8): a union of 1-4 random ellipsoids with a smooth
  radial texture, inside the brain, labelled with the BraTS conventions (table `CONTRASTS`): 1 necrotic core
  (T1/T1ce dark, T2 very bright, FLAIR intermediate-dark), 4 enhancing rim (T1 slightly dark, T1ce strongly
  bright, T2 intermediate, FLAIR bright), 2 surrounding oedema (T1/T1ce darker, T2 and FLAIR bright);
- a smooth multiplicative bias field (up to ~+-20%) per contrast and Rician noise (sigma 1-3% of WM T1).
  T1/T2 draw their noise from generators seeded [seed, index, 1, z], T1ce/FLAIR from [seed, index, 3, z] and
  their bias from [seed, index, 4] (not [seed, index, 2, ...]: numpy pads seeds with zeros, so [.., 2, 0]
  would repeat the slice-choice generator [.., 2]); each contrast renders the same whatever others are asked.

Default grid: (96, 96, 88) voxels of 2 mm (192 x 192 x 176 mm, RAS, centred on the template brain), which
holds the whole brain with margin. The returned affine is that of the output grid (the same for every case of
a grid: subjects differ by their deformation, as in data registered to a common space). Intensities are
calibrated (WM T1 ~0.9), so sources map them to [-1, 1] with one fixed scale (`INTENSITY_SCALE` -> 1).

Speed: a case is first drawn as a cheap plan (all random parameters and the tumour geometry, ~30 ms), then
rendered; any subset of axial slices and of contrasts renders exactly as in the whole case (noise is drawn
per slice), so `PhantomSlices` renders only the slices and contrasts it serves (~0.05 s per case) and
`PhantomVolumes` only its contrasts, while `make_case` renders all four contrasts of the whole volume (~0.25 s
on one CPU core; about 0.1 s of it for T1ce/FLAIR).
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage
from scipy.special import expit

from jaxdiff.data.sources import DEFAULT_FRACTIONS, axial_slices, check_split, parse_modalities, region_set, \
    split_cases
from jaxdiff.errors import InputError

DEFAULT_SHAPE = (96, 96, 88)
DEFAULT_VOXEL_MM = 2.0
MODALITIES = ("t1", "t1ce", "t2", "flair")
INTENSITY_SCALE = 1.25
T2_WM, T2_GM, T2_CSF = 0.3, 0.55, 1.0
FLAIR_WM, FLAIR_GM, FLAIR_CSF = 0.5, 0.65, 0.08
# contrast: (template map, oedema gain, oedema offset, enhancing rim, necrotic core). In the tumour the tissue
# value v becomes gain * v + offset in oedema; the rim and core values replace it (see `_paint_tumour`).
CONTRASTS = {"t1": ("t1", 0.72, 0.0, 0.55, 0.22), "t2": ("t2", 0.35, 0.6, 0.62, 0.95),
             "t1ce": ("t1", 0.72, 0.0, 1.05, 0.22), "flair": ("flair", 0.3, 0.7, 0.8, 0.35)}
NOISE_GROUPS = (("t1", "t2"), ("t1ce", "flair"))   # group g: noise generators seeded [seed, index, 2g + 1, z]
ELASTIC_MM = 2.0
TUMOUR_MARGIN_MM = 15.0


def _affine_coords(m: np.ndarray, idx) -> np.ndarray:
    """(3, nx, ny, nz) float32: the 4x4 matrix `m` applied to the open grid of voxel indices idx = (xs, ys, zs)."""
    m = m.astype(np.float32)[:3, :, None, None, None]
    xs, ys, zs = (np.asarray(i, dtype=np.float32) for i in idx)
    return m[:, 0] * xs[:, None, None] + m[:, 1] * ys[:, None] + m[:, 2] * zs + m[:, 3]


def _sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of `volume` at `coords` (3, ...), zero outside."""
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)


@functools.lru_cache(maxsize=64)
def _basis(n: int, n_ctrl: int) -> np.ndarray:
    """(n, n_ctrl) Gaussian bumps on n_ctrl evenly spaced control points, scaled so that a field with
    standard-normal control coefficients has unit variance on average."""
    x = np.linspace(0.0, 1.0, n)[:, None]
    b = np.exp(-0.5 * ((x - np.linspace(0.0, 1.0, n_ctrl)[None, :]) * (n_ctrl - 1)) ** 2)
    return (b / np.sqrt(np.mean(np.sum(b * b, axis=1)))).astype(np.float32)


def _field(coeff: np.ndarray, idx, shape) -> np.ndarray:
    """Smooth fields (C, nx, ny, nz) on the open grid idx of a `shape` volume, from control coefficients
    (C, k, k, k) (one matmul per axis)."""
    field = coeff.astype(np.float32)
    for n, i in zip(shape, idx):
        field = np.moveaxis(field, 1, -1) @ _basis(int(n), coeff.shape[1])[np.asarray(i)].T
    return field


@functools.lru_cache(maxsize=2)
def _template(voxel_mm: float) -> dict:
    """MNI152 T1, T2-like and FLAIR-like arrays at `voxel_mm`, their affine, the brain centre (mm) and the
    world positions (N, 3) mm of candidate tumour centres (>= 15 mm inside the brain, outside CSF)."""
    from nilearn import datasets

    imgs = [datasets.load_mni152_template(resolution=1), datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1), datasets.load_mni152_brain_mask(resolution=1)]
    t1, gm, wm, mask = (img.get_fdata(dtype=np.float32) for img in imgs)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    t2 = mask * (T2_WM * wm + T2_GM * gm + T2_CSF * csf)   # >= T2_WM everywhere inside the brain
    flair = mask * (FLAIR_WM * wm + FLAIR_GM * gm + FLAIR_CSF * csf)
    src_affine = imgs[0].affine
    zooms = np.asarray(imgs[0].header.get_zooms()[:3], dtype=np.float64)
    shape = tuple(int(np.ceil(n * z / voxel_mm)) for n, z in zip(t1.shape, zooms))
    affine = src_affine @ np.diag([*(voxel_mm / zooms), 1.0])
    sigma = np.maximum(voxel_mm / zooms - 1.0, 0.0) / 2.0
    coords = _affine_coords(np.linalg.inv(src_affine) @ affine, [np.arange(n) for n in shape])
    t1, t2, flair, mask = (_sample(ndimage.gaussian_filter(v, sigma), coords) for v in (t1, t2, flair, mask))
    inside = np.argwhere(mask > 0.5)
    centre = affine[:3, :3] @ ((inside.min(0) + inside.max(0)) / 2.0) + affine[:3, 3]
    deep = ndimage.distance_transform_edt(mask > 0.5) * voxel_mm >= TUMOUR_MARGIN_MM
    candidates = np.argwhere(deep & (t2 < 0.5 * (T2_GM + T2_CSF)))
    return {"t1": t1, "t2": t2, "flair": flair, "affine": affine, "centre": centre,
            "candidates": candidates @ affine[:3, :3].T + affine[:3, 3]}


def grid_affine(shape=DEFAULT_SHAPE, voxel_mm: float = DEFAULT_VOXEL_MM) -> np.ndarray:
    """RAS affine (4, 4) of the phantom output grid: `voxel_mm` spacing, grid centre on the brain centre."""
    centre = _template(float(voxel_mm))["centre"]
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = centre - voxel_mm * (np.asarray(shape) - 1) / 2.0
    return affine


def _random_affine(rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    """World (mm) transform output -> template: rotation, anisotropic scale and shift about `centre`."""
    rot = np.eye(3)
    for axis, a in enumerate(np.deg2rad(rng.uniform(-4.0, 4.0, 3))):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        rot = r @ rot
    linear = rot @ np.diag(rng.uniform(0.95, 1.05, 3))
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre - linear @ centre + rng.uniform(-4.0, 4.0, 3)
    return out


def has_tumour(index: int, seed: int = 0, tumour_fraction: float = 0.8) -> bool:
    """Whether phantom case (seed, index) carries a tumour (the first draw of its generator)."""
    return bool(np.random.default_rng([seed, index]).random() < tumour_fraction)


def _coords(plan: dict, idx) -> np.ndarray:
    """Template voxel coordinates (3, nx, ny, nz) of the output voxels on the open grid idx of a case."""
    return _affine_coords(plan["to_template"], idx) + _field(plan["elastic"], idx, plan["shape"])


def _tumour(rng: np.random.Generator, plan: dict, tmpl: dict, world: np.ndarray) -> dict | None:
    """Tumour geometry in a box of the output grid: soft memberships (necrosis, core, whole tumour) in [0, 1]
    and BraTS labels (1 necrotic core, 4 enhancing rim, 2 oedema), restricted to the brain."""
    target = tmpl["candidates"][rng.integers(len(tmpl["candidates"]))]
    centre = (np.linalg.inv(world @ plan["affine"]) @ np.append(target, 1.0))[:3]   # output voxel
    voxel_mm = plan["voxel_mm"]
    radius = rng.uniform(8.0, 18.0)                       # enhancing-core radius, mm
    necrosis = rng.uniform(0.35, 0.75) if rng.random() < 0.85 else 0.0   # fraction of the core radius
    oedema = rng.uniform(1.6, 2.4)                        # oedema extent, in core radii
    half = int(np.ceil(radius * oedema * 1.8 / voxel_mm))
    lo = np.maximum(np.round(centre).astype(int) - half, 0)
    hi = np.minimum(np.round(centre).astype(int) + half + 1, plan["shape"])
    if np.any(hi <= lo):
        return None
    idx = [np.arange(a, b) for a, b in zip(lo, hi)]
    offsets_mm = (np.indices(hi - lo, dtype=np.float32)
                  + (lo - centre).astype(np.float32)[:, None, None, None]) * np.float32(voxel_mm)
    rho = np.full(tuple(hi - lo), np.inf, dtype=np.float32)   # ellipsoidal distance, in core radii
    for lobe in range(rng.integers(1, 5)):
        shift = np.zeros(3) if lobe == 0 else rng.normal(0.0, 0.45 * radius, 3)
        radii = radius * rng.uniform(0.6, 1.1, 3)
        d = (offsets_mm - shift[:, None, None, None].astype(np.float32)) / radii[:, None, None, None]
        rho = np.minimum(rho, np.sqrt(np.sum(d * d, axis=0)))
    texture = _field(rng.standard_normal((2, 6, 6, 6)), [np.arange(n) for n in rho.shape], rho.shape)
    rho_core, rho_oed = rho * np.exp(0.12 * texture[0]), rho * np.exp(0.2 * texture[1])
    width = 0.5 * voxel_mm / radius
    brain = np.clip(_sample(tmpl["t2"], _coords(plan, idx)) / T2_WM, 0.0, 1.0)
    nec = expit((necrosis - rho_core) / width) if necrosis else np.zeros_like(rho)
    core = expit((1.0 - rho_core) / width)
    whole = np.maximum(expit((oedema - rho_oed) / width), core) * brain
    labels = np.where(nec > 0.5, 1, np.where(core > 0.5, 4, 2)).astype(np.uint8)
    labels[(whole <= 0.5) | (brain <= 0.5)] = 0
    return {"lo": lo, "hi": hi, "nec": nec, "core": core, "whole": whole, "labels": labels}


@functools.lru_cache(maxsize=64)
def _plan(index: int, seed: int, shape: tuple, voxel_mm: float, tumour_fraction: float) -> dict:
    """Every random choice of case (seed, index): deformation, tumour geometry, bias field, noise level."""
    if index < 0 or seed < 0:
        raise InputError(f"phantom case index {index} / seed {seed}: must be non-negative")
    rng = np.random.default_rng([seed, index])
    with_tumour = rng.random() < tumour_fraction          # the draw `has_tumour` repeats
    tmpl = _template(voxel_mm)
    world = _random_affine(rng, tmpl["centre"])
    affine = grid_affine(shape, voxel_mm)
    plan = {"seed": seed, "index": index, "shape": shape, "voxel_mm": voxel_mm, "affine": affine,
            "to_template": np.linalg.inv(tmpl["affine"]) @ world @ affine,
            "elastic": rng.standard_normal((3, 5, 5, 5)) * (ELASTIC_MM / voxel_mm / np.sqrt(3.0)),
            "bias": rng.uniform(0.05, 0.2) * np.concatenate([   # one (2, 3, 3, 3) block per NOISE_GROUPS entry
                rng.standard_normal((2, 3, 3, 3)),
                np.random.default_rng([seed, index, 4]).standard_normal((2, 3, 3, 3))]),
            "noise_sigma": rng.uniform(0.01, 0.03)}
    plan["tumour"] = _tumour(rng, plan, tmpl, world) if with_tumour else None
    return plan


def _paint_tumour(tumour: dict, zs: np.ndarray, images: dict, seg: np.ndarray) -> None:
    """Write the tumour's intensities into each contrast of `images` {name: (X, Y, len(zs))} (looks from
    `CONTRASTS`) and its labels into seg (X, Y, len(zs)), in place."""
    (x0, y0, z0), (x1, y1, z1) = tumour["lo"], tumour["hi"]
    sel = np.flatnonzero((zs >= z0) & (zs < z1))
    if not len(sel):
        return
    region, bz = (slice(x0, x1), slice(y0, y1), sel), zs[sel] - z0
    nec, core, whole = (tumour[k][:, :, bz] for k in ("nec", "core", "whole"))
    for name, image in images.items():     # oedema scales/brightens the tissue; core values replace it
        _, gain, offset, rim, necrotic = CONTRASTS[name]
        tissue = image[region]
        oedema = gain * tissue + offset
        image[region] = tissue * (1 - whole) + whole * (oedema * (1 - core) + core * (rim * (1 - nec) + necrotic * nec))
    seg[region] = tumour["labels"][:, :, bz]


def _add_bias_and_noise(plan: dict, idx, group: int, images: dict) -> None:
    """Bias field and Rician noise, in place, on the contrasts of NOISE_GROUPS[group] present in `images`
    {name: (X, Y, Z) on the open grid idx}; the group's noise is drawn whole per slice, so it does not depend
    on which of its contrasts are rendered."""
    names = NOISE_GROUPS[group]
    nx, ny, _ = plan["shape"]
    bias = np.exp(_field(plan["bias"][2 * group:2 * group + 2], idx, plan["shape"]))
    noise = np.stack([np.random.default_rng([plan["seed"], plan["index"], 2 * group + 1, z]).standard_normal(
        (2 * len(names), nx, ny), dtype=np.float32) for z in idx[2]], axis=-1) * np.float32(plan["noise_sigma"])
    for i, name in enumerate(names):
        if name in images:                 # Rician: magnitude of a complex Gaussian
            images[name] = np.hypot(images[name] * bias[i] + noise[2 * i], noise[2 * i + 1]).astype(np.float32)


def _render(plan: dict, zs, names=MODALITIES) -> dict:
    """Axial slices zs of a planned case: each contrast of `names` (X, Y, len(zs)) float32, seg uint8, brain
    uint8. Any subset of `names` renders exactly as in the full set."""
    zs = np.asarray(zs, dtype=int)
    nx, ny, _ = plan["shape"]
    idx = (np.arange(nx), np.arange(ny), zs)
    tmpl = _template(plan["voxel_mm"])
    coords = _coords(plan, idx)
    sampled = {"t2": _sample(tmpl["t2"], coords)}
    for source in {CONTRASTS[n][0] for n in names} - set(sampled):
        sampled[source] = _sample(tmpl[source], coords)
    images = {n: sampled[CONTRASTS[n][0]].copy() for n in names}
    brain = (sampled["t2"] >= 0.5 * T2_WM).astype(np.uint8)
    seg = np.zeros(brain.shape, dtype=np.uint8)
    if plan["tumour"] is not None:
        _paint_tumour(plan["tumour"], zs, images, seg)
    for group, members in enumerate(NOISE_GROUPS):
        if set(members) & set(names):
            _add_bias_and_noise(plan, idx, group, images)
    return {**images, "seg": seg, "brain": brain}


def to_unit_range(volume: np.ndarray) -> np.ndarray:
    """Phantom intensities -> [-1, 1] float32 with the fixed calibration `INTENSITY_SCALE` (clipped)."""
    return (2.0 * np.clip(np.asarray(volume) / INTENSITY_SCALE, 0.0, 1.0) - 1.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def make_case(index: int, seed: int = 0, shape: tuple = DEFAULT_SHAPE, voxel_mm: float = DEFAULT_VOXEL_MM,
              tumour_fraction: float = 0.8) -> dict:
    """One whole phantom subject, deterministic in (seed, index); cached (arrays are read-only).

    Args:
      index, seed: non-negative ints; the case's numpy Generator is seeded with [seed, index].
      shape: output grid (X, Y, Z) in RAS voxel order (a tuple); voxel_mm: its isotropic spacing.
      tumour_fraction: probability that the case has a tumour.
    Returns:
      {"t1", "t1ce", "t2", "flair": (X, Y, Z) float32 >= 0 each, "seg": (X, Y, Z) uint8 BraTS labels {0, 1, 2, 4},
       "brain": (X, Y, Z) uint8 brain mask, "affine": (4, 4) float64 voxel -> mm}.
    """
    plan = _plan(int(index), int(seed), tuple(int(n) for n in shape), float(voxel_mm), float(tumour_fraction))
    case = {**_render(plan, np.arange(plan["shape"][2])), "affine": plan["affine"].copy()}
    for a in case.values():
        a.flags.writeable = False
    return case


def _choose_slices(plan: dict, count: int, tumour_only: bool) -> list:
    """`count` axial indices of a planned case: about half through the tumour (all if tumour_only), the rest
    elsewhere in the brain (slices whose brain area, on a 4x coarser in-plane grid, is >= 20% of the
    largest); drawn from a generator seeded with [seed, index, 2]."""
    nx, ny, nz = plan["shape"]
    coarse = _coords(plan, (np.arange(0, nx, 4), np.arange(0, ny, 4), np.arange(nz)))
    area = np.sum(_sample(_template(plan["voxel_mm"])["t2"], coarse) >= 0.5 * T2_WM, axis=(0, 1))
    brain_z = np.flatnonzero(area >= 0.2 * area.max())
    tumour = plan["tumour"]
    tumour_z = np.zeros(0, int) if tumour is None else tumour["lo"][2] + np.flatnonzero(tumour["labels"].any((0, 1)))
    n_tumour = 0 if not len(tumour_z) else count if tumour_only else (count + 1) // 2
    other_z = np.setdiff1d(brain_z, tumour_z)
    other_z = other_z if len(other_z) else brain_z
    rng = np.random.default_rng([plan["seed"], plan["index"], 2])
    pick = [rng.choice(pool, n, replace=len(pool) < n) for pool, n in ((tumour_z, n_tumour),
                                                                      (other_z, count - n_tumour)) if n]
    return sorted(int(k) for k in np.concatenate(pick))


@functools.lru_cache(maxsize=1024)
def _slice_stack(seed, index, count, image_size, modalities, tumour_only, tumour_fraction, shape, voxel_mm,
                 regions=None):
    """(images (count, S, S, C), masks (count, S, S, K)) of one phantom case (K: see `axial_slices`); cached
    per case."""
    plan = _plan(index, seed, shape, voxel_mm, tumour_fraction)
    case = _render(plan, _choose_slices(plan, count, tumour_only), modalities)
    return axial_slices([to_unit_range(case[m]) for m in modalities], case["seg"], range(count), image_size,
                        regions)


class _PhantomSplit:
    """Cases of one split of a phantom set (disjoint across splits, deterministic in `seed`); with
    `tumour_only` only the cases that carry a tumour."""

    def __init__(self, split, num_cases, seed, tumour_fraction, shape, voxel_mm, fractions, modality,
                 tumour_only=False):
        self.split = check_split(split)
        self.seed, self.tumour_fraction = int(seed), float(tumour_fraction)
        self.shape, self.voxel_mm = tuple(int(n) for n in shape), float(voxel_mm)
        self.modalities = parse_modalities(modality, MODALITIES)
        self.tumour_only = bool(tumour_only)
        cases = split_cases(range(int(num_cases)), self.seed, fractions)[self.split]
        self.cases = [c for c in cases if not tumour_only or has_tumour(c, self.seed, self.tumour_fraction)]
        if not self.cases:
            raise InputError(f"config key data.num_cases: {num_cases} phantom cases leave split {split!r} empty")

    def case_volumes(self, cases=None):
        """Whole cases of this split, rendered in full as `make_case` renders them (only `modalities`).

        cases: case indices from `self.cases` (None: all, in split order). Yields {"case": "phantom_<index>",
        "images": {modality: (X, Y, Z) float32 phantom intensities}, "seg": (X, Y, Z) uint8 BraTS labels
        {0, 1, 2, 4}, "affine": (4, 4) float64 RAS grid affine (`voxel_mm` voxels)}.
        """
        for index in (self.cases if cases is None else cases):
            plan = _plan(int(index), self.seed, self.shape, self.voxel_mm, self.tumour_fraction)
            case = _render(plan, np.arange(self.shape[2]), self.modalities)
            yield {"case": f"phantom_{int(index):03d}", "images": {m: case[m] for m in self.modalities},
                   "seg": case["seg"], "affine": plan["affine"].copy()}


class PhantomSlices(_PhantomSplit):
    """Axial phantom slices: {"image": (S, S, C) float32 in [-1, 1], "mask": (S, S, K) float32 {0, 1}, "case":
    int}, C = number of modalities (channel order as given). K = 1, the whole tumour (seg > 0), unless `regions`
    is set: "brats" gives K = 3 nested regions WT, TC, ET (`sources.REGION_SETS`, `sources.axial_slices`).

    Each case contributes `slices_per_case` slices, about half through its tumour (all of them with
    `tumour_only`, which also keeps only tumour cases) and the rest elsewhere in the brain. On first use a
    case is planned and only those slices rendered (identical to the same slices of `make_case`); the slices
    of one case share that rendering through a per-case cache.
    """

    def __init__(self, split: str = "train", image_size: int = 64, num_cases: int = 64, slices_per_case: int = 8,
                 modality="t2", seed: int = 0, tumour_only: bool = False, tumour_fraction: float = 0.8,
                 shape=DEFAULT_SHAPE, voxel_mm: float = DEFAULT_VOXEL_MM, fractions=DEFAULT_FRACTIONS,
                 regions=None):
        super().__init__(split, num_cases, seed, tumour_fraction, shape, voxel_mm, fractions, modality, tumour_only)
        self.image_size, self.slices_per_case = int(image_size), int(slices_per_case)
        self.regions = None if region_set(regions) is None else regions.lower()

    def __len__(self) -> int:
        return len(self.cases) * self.slices_per_case

    def __getitem__(self, idx: int) -> dict:
        case, slot = self.cases[idx // self.slices_per_case], idx % self.slices_per_case
        images, masks = _slice_stack(self.seed, case, self.slices_per_case, self.image_size, self.modalities,
                                     self.tumour_only, self.tumour_fraction, self.shape, self.voxel_mm,
                                     self.regions)
        return {"image": images[slot].copy(), "mask": masks[slot].copy(), "case": np.int32(case)}


@functools.lru_cache(maxsize=512)
def _volume(seed, index, out_shape, modalities, tumour_fraction, shape, voxel_mm):
    """(image (D, H, W, C) in [-1, 1], mask (D, H, W, 1), affine (4, 4)) of one case zoomed to out_shape;
    only `modalities` are rendered (each as in `make_case`)."""
    plan = _plan(index, seed, shape, voxel_mm, tumour_fraction)
    case = _render(plan, np.arange(shape[2]), modalities)
    image = np.stack([to_unit_range(case[m]) for m in modalities], axis=-1)
    mask = (case["seg"] > 0).astype(np.float32)[..., None]
    affine = plan["affine"].copy()
    if out_shape is not None and tuple(out_shape) != shape:
        step = np.asarray(shape, dtype=np.float64) / np.asarray(out_shape)
        image = np.clip(ndimage.zoom(ndimage.gaussian_filter(image, (*np.maximum(step - 1, 0) / 2, 0)),
                                     (*(1 / step), 1), order=1, mode="nearest", grid_mode=True), -1, 1)
        mask = (ndimage.zoom(mask, (*(1 / step), 1), order=1, mode="nearest", grid_mode=True) > 0.5)
        affine = affine @ np.block([[np.diag(step), ((step - 1) / 2)[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])
    return image.astype(np.float32), mask.astype(np.float32), affine.astype(np.float32)


class PhantomVolumes(_PhantomSplit):
    """Whole phantom volumes: {"image": (D, H, W, C) float32 in [-1, 1], "mask": (D, H, W, 1) whole tumour,
    "affine": (4, 4) float32 voxel -> mm, "case": int}; axes are the RAS voxel axes of `affine`.

    `shape` resamples the whole field of view to that grid (e.g. (32, 32, 32): about 6 x 6 x 5.5 mm voxels,
    the affine adjusted to match); None keeps the generation grid `volume_shape`.
    """

    def __init__(self, split: str = "train", shape=(32, 32, 32), num_cases: int = 64, modality="t1",
                 seed: int = 0, tumour_fraction: float = 0.8, volume_shape=DEFAULT_SHAPE,
                 voxel_mm: float = DEFAULT_VOXEL_MM, fractions=DEFAULT_FRACTIONS):
        super().__init__(split, num_cases, seed, tumour_fraction, volume_shape, voxel_mm, fractions, modality)
        self.out_shape = None if shape is None else tuple(int(n) for n in shape)
        if self.out_shape is not None and len(self.out_shape) != 3:
            raise InputError(f"config key data.image_size: {shape!r} is not a 3D shape")

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, idx: int) -> dict:
        case = self.cases[idx]
        image, mask, affine = _volume(self.seed, case, self.out_shape, self.modalities, self.tumour_fraction,
                                      self.shape, self.voxel_mm)
        return {"image": image.copy(), "mask": mask.copy(), "affine": affine.copy(), "case": np.int32(case)}
