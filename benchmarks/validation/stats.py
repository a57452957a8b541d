"""Pure statistics of the validation: arrays in, numbers out (unit-tested)."""
from __future__ import annotations

import math

import numpy as np

NAN = float("nan")


def finite_pairs(est, true) -> tuple[np.ndarray, np.ndarray]:
    """The pairs where both the measured and the true value are finite."""
    e, t = np.asarray(est, float), np.asarray(true, float)
    keep = np.isfinite(e) & np.isfinite(t)
    return e[keep], t[keep]


def recovery(est, true) -> dict:
    """Agreement of measured with true values.

    ``bias`` = mean(measured - true); ``slope``/``intercept`` of the OLS fit of measured on
    true; ``r`` Pearson; ``mae`` mean absolute error; ``n`` finite pairs; ``n_missing`` pairs
    dropped because the measure was n/a. Slope and r are NaN with fewer than 3 pairs or no
    spread in the truth.
    """
    e_all = np.asarray(est, float)
    e, t = finite_pairs(est, true)
    out = {"n": int(e.size), "n_missing": int(e_all.size - e.size), "bias": NAN, "slope": NAN,
           "intercept": NAN, "r": NAN, "mae": NAN}
    if e.size == 0:
        return out
    out["bias"] = float(np.mean(e - t))
    out["mae"] = float(np.mean(np.abs(e - t)))
    if e.size >= 3 and np.ptp(t) > 0:
        slope, intercept = np.polyfit(t, e, 1)
        out["slope"], out["intercept"] = float(slope), float(intercept)
        if np.ptp(e) > 0:
            out["r"] = float(np.corrcoef(e, t)[0, 1])
    return out


def min_detectable_d(n_per_group: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest Cohen's d a two-sided two-sample t-test detects with ``power`` (equal groups)."""
    from statsmodels.stats.power import TTestIndPower

    return float(TTestIndPower().solve_power(effect_size=None, nobs1=n_per_group, alpha=alpha,
                                             power=power, ratio=1.0, alternative="two-sided"))


def true_d_needed(d_observed: float, icc: float) -> float:
    """Measurement error attenuates a true effect: d_obs = d_true * sqrt(ICC).

    Returns the true d whose attenuated value is ``d_observed``; NaN if ICC <= 0.
    """
    if not (np.isfinite(icc) and icc > 0):
        return NAN
    return float(d_observed / math.sqrt(min(icc, 1.0)))


def centroid_mm(mask, affine) -> np.ndarray:
    """World (mm) centroid of the voxel centres of a boolean mask; NaNs if the mask is empty."""
    idx = np.argwhere(np.asarray(mask, bool))
    if idx.size == 0:
        return np.full(3, NAN)
    a = np.asarray(affine, float)
    return a[:3, :3] @ idx.mean(axis=0) + a[:3, 3]


def shifted_rigid(params, delta) -> np.ndarray:
    """Parameters of an ANTs rigid/affine (9 matrix + 3 translation) with ``delta`` (mm,
    the transform's own physical space) added to its translation: every mapped point moves by
    ``delta``, i.e. a misregistration of |delta| mm."""
    p = np.asarray(params, float).copy()
    if p.size != 12:
        raise ValueError("expected 12 parameters (3x3 matrix + translation)")
    p[9:12] += np.asarray(delta, float)
    return p


def shift_directions() -> dict[str, np.ndarray]:
    """Unit directions of the deliberate misregistration, in ANTs physical space (LPS)."""
    return {"x": np.array([1.0, 0, 0]), "y": np.array([0, 1.0, 0]), "z": np.array([0, 0, 1.0])}


# Score differences smaller than this are noise: two runs of the same test-retest images that
# differed only by the random sampling of the T1w affine (2026-12-01) moved the ICC of one method
# by 0.045-0.09 and its r by up to 0.02, so a score (mean of r and ICC) by about 0.03.
TOLERANCE = 0.03


def recommend(scores: dict[str, dict], default: str, tol: float = TOLERANCE, min_score: float = 0.5) -> dict:
    """Pick the best of several choices.

    ``scores[name]`` holds ``r`` (agreement with truth; higher is better), optionally ``icc``
    (test-retest; higher is better) and ``bias``. A choice's score is the mean of its finite
    ``r`` and ``icc``. The default is kept unless another choice beats it by more than ``tol``
    (differences within ``tol`` are noise on a few subjects); among choices within ``tol`` of
    the best, the smallest |bias| wins. A choice that leaves more values missing (``n_missing``)
    than the default cannot replace it: its score is computed on the subjects it could measure.
    When no choice reaches ``min_score`` none tracks the truth and the default is kept
    (``"none_good": True``). Returns ``{"best", "keep_default", "none_good", "score": {name: s}}``.
    """
    score = {}
    for name, s in scores.items():
        vals = [s.get(k, NAN) for k in ("r", "icc")]
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        score[name] = float(np.mean(vals)) if vals else NAN
    allowed = scores.get(default, {}).get("n_missing", 0) or 0
    finite = {k: v for k, v in score.items() if np.isfinite(v)
              and (k == default or (scores[k].get("n_missing", 0) or 0) <= allowed)}
    top = max(finite.values()) if finite else NAN
    if not finite or top < min_score:
        return {"best": default, "keep_default": True, "none_good": True, "score": score}
    if default in finite and finite[default] >= top - tol:
        return {"best": default, "keep_default": True, "none_good": False, "score": score}
    near = [k for k, v in finite.items() if v >= top - tol]
    best = min(near, key=lambda k: (abs(scores[k].get("bias", 0.0) or 0.0), -finite[k]))
    return {"best": best, "keep_default": best == default, "none_good": False, "score": score}


def sd_total(sd_base: float, age_slope: float, age_range: tuple[float, float]) -> float:
    """Between-subject SD of CR = base + slope * age, age ~ U(range) independent of base."""
    lo, hi = age_range
    return float(math.sqrt(sd_base ** 2 + (age_slope * (hi - lo)) ** 2 / 12.0))


def icc_2_1_ci(data, alpha: float = 0.05) -> tuple[float, float]:
    """Confidence interval (1 - alpha) of ICC(2,1), McGraw & Wong (1996), case 2A.

    With n subjects, k sessions, the two-way ANOVA mean squares MSR (subjects), MSC
    (sessions), MSE (residual; ``nmbids.measures.two_way_mean_squares``) and the estimate
    p = ICC(2,1):
    a = k p / (n (1 - p)), b = 1 + k p (n - 1) / (n (1 - p)),
    v = (a MSC + b MSE)² / ((a MSC)² / (k - 1) + (b MSE)² / ((n - 1)(k - 1))),
    F_L = F⁻¹(1 - alpha/2; n - 1, v), F_U = F⁻¹(1 - alpha/2; v, n - 1),
    lower = n (MSR - F_L MSE) / (F_L (k MSC + (k n - k - n) MSE) + n MSR),
    upper = n (F_U MSR - MSE) / (k MSC + (k n - k - n) MSE + n F_U MSR).
    Complete cases only; (NaN, NaN) with fewer than 3 subjects.
    """
    from scipy.stats import f as fdist

    from nmbids.measures import icc_2_1, two_way_mean_squares

    n, k, msr, msc, mse = two_way_mean_squares(data)
    if n < 3 or k < 2:
        return NAN, NAN
    p = icc_2_1(data)
    a = k * p / (n * (1 - p))
    b = 1 + k * p * (n - 1) / (n * (1 - p))
    v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1)))
    fl = fdist.ppf(1 - alpha / 2, n - 1, v)
    fu = fdist.ppf(1 - alpha / 2, v, n - 1)
    lower = n * (msr - fl * mse) / (fl * (k * msc + (k * n - k - n) * mse) + n * msr)
    upper = n * (fu * msr - mse) / (k * msc + (k * n - k - n) * mse + n * fu * msr)
    return float(lower), float(upper)
