"""The options of a simulation: ``Options`` (recorded in truth.json["args"]) and their checks.

``Options.from_keywords`` turns the keyword arguments of ``simulate_dataset`` (strings or
sequences, ``effect``/``repeats_as_runs`` aliases) into a checked ``Options``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from .acquisition import ACQ_TYPES, NM_ORIENTATIONS
from .cohort import parse_age_slope, parse_effects
from .writer import REPEATS_LAYOUTS


@dataclass
class Options:
    """Everything that changes what is simulated (recorded in truth.json["args"])."""

    acq: tuple[str, ...] = ("gremt",)
    nuclei: str = "builtin"
    nuclei_labels: str | None = None
    template: str | None = None
    t1w_res: float = 1.0
    t1w_snr: float = 40.0
    nm_inplane: float = 0.8
    nm_slice: float = 2.0
    nm_slices: int = 20
    nm_fov: tuple[float, float] = (180.0, 200.0)
    fse_slice: float = 2.5
    fse_slices: int = 14
    snr: float = 25.0
    repeats: int = 3
    repeats_layout: str = "auto"  # auto | 4d | runs
    max_tilt: float = 15.0
    # plane of the NM slab's slices: "axial" (the usual oblique axial slab), "coronal" or
    # "sagittal" (slices stacked along A-P or L-R; the in-plane FOV then spans the other two axes)
    nm_orientation: str = "axial"
    motion_mm: float = 1.0
    motion_deg: float = 1.0
    deform_mm: float = 3.0
    bias: float = 0.15
    noise_free: bool = False
    # NM images reconstructed on a grid this many times finer in plane than acquired
    # (zero-filling): the noise of adjacent voxels is then correlated (1: independent)
    nm_zero_fill: int = 1
    # the same through the slices (a 3D slab reconstructed with interpolated slices)
    nm_slice_zero_fill: int = 1
    naming_variants: bool = False
    sessions: int = 1
    groups: tuple[str, ...] = ("control",)
    effects: tuple[str, ...] = ()
    sites: int = 1
    site_cr_spread: float = 0.15
    cr_sd: float | None = None  # None: base CR ~ U(range); else middle + N(0, cr_sd)
    age_range: tuple[float, float] = (20.0, 70.0)
    age_slope: tuple[str, ...] = ("SN:0.001", "VTA:0.001", "LC:0.0")
    sex_effect: float = 0.0

    def validate(self) -> None:
        bad = [a for a in self.acq if a not in ACQ_TYPES]
        if bad or not self.acq:
            raise ValueError(f"--acq: unknown acquisition type(s) {bad}; use {sorted(ACQ_TYPES)}")
        if len(set(self.acq)) != len(self.acq):
            raise ValueError("--acq: each type at most once")
        for name in ("t1w_res", "nm_inplane", "nm_slice", "fse_slice"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        if self.nm_zero_fill < 1 or self.nm_slice_zero_fill < 1:
            raise ValueError("--nm-zero-fill and --nm-slice-zero-fill must be >= 1")
        if self.nm_slices < 1 or self.fse_slices < 1 or self.repeats < 1 or self.sessions < 1:
            raise ValueError("slice counts, --repeats and --sessions must be >= 1")
        if self.nm_orientation not in NM_ORIENTATIONS:
            raise ValueError(f"--nm-orientation must be one of {NM_ORIENTATIONS}")
        if self.repeats_layout not in REPEATS_LAYOUTS:
            raise ValueError(f"--repeats-layout must be one of {REPEATS_LAYOUTS}")
        if self.sites < 1 or not self.groups or len(set(self.groups)) != len(self.groups):
            raise ValueError("--sites must be >= 1 and --groups distinct, non-empty")
        for g in self.groups:
            if not re.fullmatch(r"[A-Za-z0-9]+", g):
                raise ValueError(f"group label {g!r} must be alphanumeric")
        if not self.noise_free and (self.snr <= 0 or self.t1w_snr <= 0):
            raise ValueError("--snr and --t1w-snr must be > 0 (or use --noise-free)")
        if self.age_range[0] > self.age_range[1]:
            raise ValueError("--age-range: LOW,HIGH")
        if self.cr_sd is not None and not self.cr_sd >= 0:
            raise ValueError("--cr-sd must be >= 0")
        parse_effects(self)
        parse_age_slope(self.age_slope)


    @classmethod
    def from_keywords(cls, **options) -> "Options":
        """Checked options from keywords: the fields, with comma strings for sequences
        (``acq="gremt,fse"``, ``nm_fov="180x200"``), ``effect`` for ``effects`` and
        ``repeats_as_runs=True`` for ``repeats_layout="runs"``."""
        if options.pop("repeats_as_runs", False):
            options["repeats_layout"] = "runs"
        if "effect" in options:
            options["effects"] = options.pop("effect")
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown option(s): {sorted(unknown)}")
        for key in ("acq", "groups", "effects", "age_slope", "nm_fov", "age_range"):
            if key in options and isinstance(options[key], str):
                sep = r"[,x]" if key == "nm_fov" else ","
                options[key] = tuple(x for x in re.split(sep, options[key]) if x)
            if key in options and key in ("nm_fov", "age_range"):
                options[key] = tuple(float(x) for x in options[key])
            elif key in options:
                options[key] = tuple(options[key])
        opts = cls(**options)
        opts.validate()
        return opts
