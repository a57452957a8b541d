"""The NM contrast model: the signal of each tissue per contrast, and of the nuclei.

Signals are fractions of S0, the WM signal (table in the package docstring, "NM contrast").
Each reference region is painted with one tissue (CC with WM, PT with the pontine tegmentum's
own signal); a nucleus is ``ref x (1 + CR)`` over the tissue of its ROI's reference region, with
CR the subject's (GRE-MT units) times the acquisition type's factor.
"""
from __future__ import annotations

from .regions import NUCLEI, REF_ROIS, REFERENCE

# Tissue signal per contrast, as fractions of S0 (the WM signal; MT-on is derived).
CONTRASTS: dict[str, dict[str, float]] = {
    "gremt": {"WM": 1.00, "GM": 0.93, "CSF": 0.35, "PT": 0.96, "skull": 0.08, "scalp": 0.90},
    "fse": {"WM": 1.00, "GM": 0.86, "CSF": 0.30, "PT": 0.93, "skull": 0.05, "scalp": 1.10},
    "mt_off": {"WM": 1.00, "GM": 1.12, "CSF": 1.45, "PT": 1.06, "skull": 0.08, "scalp": 1.00},
}
MTR_TISSUE = {"WM": 42.0, "GM": 33.0, "CSF": 3.0, "PT": 38.0, "skull": 0.0, "scalp": 20.0}
CONTRASTS["mt_on"] = {k: v * (1 - MTR_TISSUE[k] / 100) for k, v in CONTRASTS["mt_off"].items()}
MT_OFF_NUCLEUS_CR = 0.05  # nuclei on the MT-off image: ref_off x 1.05

# The tissue (a key of CONTRASTS) that fills each reference region of the pipeline.
REF_TISSUE = {"CC": "WM", "PT": "PT"}
if set(REF_TISSUE) != set(REF_ROIS):
    raise RuntimeError(f"nmbids.phantom paints reference regions {sorted(REF_TISSUE)}; "
                       f"the pipeline's atlas has {list(REF_ROIS)}")

# CR of an acquisition = subject CR (GRE-MT units) x this factor.
ACQ_CR_SCALE = {
    "gremt": {"SN": 1.0, "VTA": 1.0, "LC": 1.0},
    "fse": {"SN": 0.6, "VTA": 0.6, "LC": 0.85},
    "mtr": {"SN": 1.0, "VTA": 1.0, "LC": 1.0},
}


def ref_tissue(roi: str) -> str:
    """The tissue of the reference region of a target ROI ("SN" -> "WM", "LC" -> "PT")."""
    return REF_TISSUE[REFERENCE[roi]]


def contrasts_of(acq: str, n_repeats: int) -> list[str]:
    """The contrast of each repeat of an acquisition type (MTR: the mt-on then mt-off image)."""
    return ["mt_on", "mt_off"] if acq == "mtr" else [acq] * n_repeats


def nucleus_signals(cname: str, acq_cr: dict, s0: float) -> list[float]:
    """Signal (image units) of the six nuclei, ``NUCLEI`` order, on contrast ``cname``."""
    w = CONTRASTS[cname]
    vals = []
    for name in NUCLEI:
        roi, h = name.split("_")
        ref = w[ref_tissue(roi)]
        c = MT_OFF_NUCLEUS_CR if cname == "mt_off" else acq_cr[roi][h]
        vals.append(s0 * ref * (1 + c))
    return vals
