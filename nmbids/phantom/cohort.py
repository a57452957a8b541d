"""The cohort: who each subject is (group, site, age, sex) and the subject's true CR.

Subject i (0-based) is in group ``groups[i % G]`` and site ``(i // G) % K``. Its CR (GRE-MT
units) is ``site_scale * (base + age_slope * (age - 45) + sex_effect * [M] + group effect)``,
with the base drawn per ROI and hemisphere (package docstring, "Cohorts"). ``--effect`` and
``--age-slope`` are parsed here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .regions import HEMIS, ROIS

if TYPE_CHECKING:
    from .options import Options

REF_AGE = 45.0
CR_BASE_RANGE = {"SN": (0.10, 0.30), "VTA": (0.08, 0.25), "LC": (0.10, 0.20)}
HEMI_SD = 0.015


def parse_effects(opts: Options) -> list[tuple[str, str, str, float]]:
    """``[GROUP:]ROI:MEASURE:VALUE`` -> [(group, roi, measure, value)] (one per target group)."""
    out = []
    for spec in opts.effects:
        parts = spec.split(":")
        if len(parts) == 3:
            targets = list(opts.groups[1:])
            if not targets:
                raise ValueError(f"--effect {spec}: needs a second group (--groups) or GROUP:")
        elif len(parts) == 4:
            targets = [parts.pop(0)]
            if targets[0] not in opts.groups:
                raise ValueError(f"--effect {spec}: group {targets[0]!r} not in --groups")
        else:
            raise ValueError(f"--effect {spec}: expected [GROUP:]ROI:MEASURE:VALUE")
        roi, measure, value = parts
        if roi not in ROIS:
            raise ValueError(f"--effect {spec}: ROI must be one of {ROIS}")
        if measure not in ("cr", "volume"):
            raise ValueError(f"--effect {spec}: MEASURE must be cr or volume")
        if measure == "volume" and opts.nuclei != "builtin":
            raise ValueError("--effect ...:volume:... needs --nuclei builtin")
        try:
            val = float(value)
        except ValueError as exc:
            raise ValueError(f"--effect {spec}: VALUE must be a number") from exc
        if measure == "volume" and val <= -1:
            raise ValueError(f"--effect {spec}: volume change must be > -1")
        out.extend((g, roi, measure, val) for g in targets)
    return out


def parse_age_slope(specs) -> dict[str, float]:
    """``[ROI:]VALUE`` specs -> {ROI: CR change per year} (a bare VALUE sets every ROI)."""
    slopes = {roi: 0.0 for roi in ROIS}
    for spec in specs:
        if ":" in spec:
            roi, val = spec.split(":", 1)
            if roi not in ROIS:
                raise ValueError(f"--age-slope {spec}: ROI must be one of {ROIS}")
            slopes[roi] = float(val)
        else:
            slopes = {roi: float(spec) for roi in ROIS}
    return slopes


def draw_sites(opts: Options, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """{"site1": {"cr_scale", "snr_scale"}, ...}: site 1 is 1 and 1, the others drawn."""
    sites = {}
    for k in range(opts.sites):
        lab = f"site{k + 1}"
        cr_s = 1.0 if k == 0 else float(rng.uniform(1 - opts.site_cr_spread, 1 + opts.site_cr_spread))
        snr_s = 1.0 if k == 0 else float(rng.uniform(0.8, 1.2))
        sites[lab] = {"cr_scale": round(cr_s, 6), "snr_scale": round(snr_s, 6)}
    return sites


def group_and_site(i: int, opts: Options) -> tuple[str, str]:
    """The group and site label of subject ``i`` (0-based)."""
    G = len(opts.groups)
    return opts.groups[i % G], f"site{(i // G) % opts.sites + 1}"


def draw_age_sex(rng: np.random.Generator, opts: Options) -> tuple[int, str]:
    age = int(round(rng.uniform(*opts.age_range)))
    sex = "M" if rng.random() < 0.5 else "F"
    return age, sex


def draw_base_cr(rng: np.random.Generator, roi: str, cr_sd: float | None = None) -> float:
    """A subject's base CR of ``roi`` (GRE-MT units, before age, sex, group and site).

    ``cr_sd`` None: uniform over ``CR_BASE_RANGE[roi]``; else the middle of that range plus
    N(0, cr_sd) clipped to +-3 cr_sd.
    """
    lo, hi = CR_BASE_RANGE[roi]
    if cr_sd is None:
        return float(rng.uniform(lo, hi))
    return (lo + hi) / 2 + float(np.clip(rng.normal(0, cr_sd), -3 * cr_sd, 3 * cr_sd))


def draw_base(rng: np.random.Generator, opts: Options) -> dict[str, dict[str, float]]:
    """ROI -> {L, R}: the base CR ``m`` of each ROI split ``m + d``, ``m - d`` between sides."""
    base = {}
    for roi in ROIS:
        m = draw_base_cr(rng, roi, opts.cr_sd)
        d = float(np.clip(rng.normal(0, HEMI_SD), -2 * HEMI_SD, 2 * HEMI_SD))
        base[roi] = {"L": m + d, "R": m - d}
    return base


def subject_cr(base, age: int, sex: str, group: str, cr_scale: float, effects, slopes, opts: Options):
    """(CR per ROI and side, GRE-MT units; volume scale per ROI with a volume effect)."""
    vol_scale = {}
    cr = {}
    for roi in ROIS:
        add = slopes[roi] * (age - REF_AGE) + (opts.sex_effect if sex == "M" else 0.0)
        add += sum(v for g, r, meas, v in effects if g == group and r == roi and meas == "cr")
        for g, r, meas, v in effects:
            if g == group and r == roi and meas == "volume":
                vol_scale[roi] = vol_scale.get(roi, 1.0) * (1 + v)
        cr[roi] = {h: cr_scale * (base[roi][h] + add) for h in HEMIS}
    return cr, vol_scale

