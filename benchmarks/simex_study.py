"""Study of SIMEX on the neighbour-chosen CR (no pipeline change by itself).

    python benchmarks/score_study.py prepare --geometry main|alt   # the cohort and its base run
    python benchmarks/score_study.py cache   --geometry main|alt   # realigned repeats, N4 fields
    python benchmarks/simex_study.py main|alt [--draws 40] [--acq GREMT,FSE] [--repeats 1,2,3]

It uses the score study's cache (``score_study.py``: one AAL3-nuclei cohort, simulated again
with the same seed at every SNR, ROIs and transforms from the pipeline's run at SNR 25) and
measures, per cell, the neighbour-chosen CR of SN, VTA (``cr_top_volume`` with the in-plane
neighbour score, the profile's volume) and LC (``slice_top_mean`` with that score against the
slice references of the image, ``slice_contrast``), as the pipeline does on the ROI's crop:

* ``nb8``: the neighbour-chosen CR (``neighbour_top_volume``, ``neighbour_max_per_slice``);
* ``simex_lin``: ``measures.simex`` of it (linear extrapolant, the pipeline's);
* ``simex_quad``: the same draws with a quadratic extrapolant (Cook & Stefanski's other usual
  choice).

The noise sd is the pipeline's: ``measures.noise_sd`` in the ROI's reference region of the
k-repeat mean image. Prints, per acquisition, ROI and candidate: worst and best measured/true
ratio, between-SNR spread (the largest over numbers of repeats), and the smallest r and ICC at
SNR >= 14; writes ``simex_values.tsv`` and ``simex_summary.tsv`` next to the score study's
results.

Decision rule, fixed before the cohort's numbers were looked at: a candidate is adopted for a
ROI if, against ``nb8`` and on both geometries, it lowers the between-SNR spread, raises the
worst-cell ratio (for the SN on GRE-MT and FSE), pushes no cell above 1.15, and lowers neither
the smallest ICC nor the smallest r at SNR >= 14 by more than 0.02; if both pass, the linear
(the smaller variance). Outcome (2026-12-03, docs/validation.md "Fixes"): only GRE-MT SN passes
(linear); FSE SN, every VTA and LC lose 0.03-0.07 of ICC or r, and the quadratic loses up to
0.2 of ICC. The pipeline takes SIMEX for GRE-MT SN only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import score_study as ss  # noqa: E402
from validation import measure as vm, snr_sweep as sw  # noqa: E402

from nmbids import measures as m  # noqa: E402
from nmbids.acquisitions import DEFAULT_REF_STAT, PROFILES  # noqa: E402
from nmbids.roi_measures import region_masks, roi_crop  # noqa: E402

ROIS = ("SN", "VTA", "LC")


def simex_both(estimate, img: np.ndarray, sigma: float, draws: int) -> dict:
    """nb8, and its linear (``measures.simex``) and quadratic SIMEX from the same draws."""
    t0 = np.asarray(estimate(img), float)
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(img.shape) for _ in range(draws)]
    z = np.asarray(m.SIMEX_LEVELS, float)
    tz = np.stack([np.mean([np.asarray(estimate(img + np.sqrt(q) * sigma * d), float) for d in noise], axis=0)
                   for q in z])
    zz = np.concatenate([[0.0], z])
    y = np.concatenate([t0[None], tz], axis=0)
    vq = np.vander(zz, 3, increasing=True)
    quad = (np.array([1.0, -1.0, 1.0]) @ np.linalg.pinv(vq)) @ y.reshape(zz.size, -1)
    return {"nb8": t0, "simex_lin": np.asarray(m.simex(estimate, img, sigma, n_draws=draws), float),
            "simex_quad": quad.reshape(t0.shape)}


def profile_mean(v: np.ndarray) -> float:
    v = np.asarray(v, float)
    if v.ndim == 0:
        return float(v)
    f = v[np.isfinite(v)]
    return float(f.mean()) if f.size >= 3 else np.nan


def run(geometry: str, draws: int, acqs, ks) -> pd.DataFrame:
    g = ss.GEOMETRIES[geometry]
    base_out = ss.gdir(geometry) / f"snr-{sw.BASE_SNR:g}" / "out"
    meas = vm.load_measures(base_out)
    table = vm.atlas_table(base_out)
    rows = []
    for snr in g["snrs"]:
        truth = json.loads((ss.gdir(geometry) / f"snr-{snr:g}" / "truth.json").read_text())
        for sub, ses, acq in vm.truth_acqs(truth):
            acq_type = acq["acq_type"]
            if acq_type not in acqs:
                continue
            c = np.load(ss.gdir(geometry) / "cache" / f"snr-{snr:g}" / f"{sub}_{ses}_{acq_type}.npz")
            cov = vm.coverage_of(meas[(meas.participant_id == sub) & (meas.session_id == ses)], acq_type)
            prof = PROFILES[acq_type]
            vox = float(np.prod(c["spacing"]))
            masks = region_masks(c["dseg"], table)
            for ki, k in enumerate(c["ks"]):
                if ks and int(k) not in ks:
                    continue
                nm = np.mean([r.astype(float) / c["fields"][ki] for r in c["reps"][:k]], axis=0)
                for roi in ROIS:
                    refmask = masks[(prof.references[roi], "bilateral")]
                    ref = m.reference_value(nm[refmask], DEFAULT_REF_STAT, min_voxels=prof.min_voxels)
                    sigma = m.noise_sd(nm, refmask, 2, prof.min_voxels)
                    refs = m.slice_references(nm, refmask, 2, DEFAULT_REF_STAT, prof.min_voxels)
                    for hemi in ("L", "R"):
                        cv = cov.get((roi, hemi), np.nan)
                        if (roi, hemi) not in masks or not (np.isfinite(cv) and cv >= prof.min_coverage):
                            continue
                        box = roi_crop(masks[(roi, hemi)], 2)
                        inside = masks[(roi, hemi)][box]
                        if roi == "LC":
                            def estimate(img, inside=inside, refs=refs[box[2]]):
                                top = m.slice_top_mean(img, inside, 2, scores=m.inplane_neighbour_mean(img, 2))
                                return m.slice_contrast(top, refs)
                        else:
                            def estimate(img, inside=inside, vol=prof.top_volume_of(roi)):
                                return m.cr_top_volume(img[inside], ref, vol, vox, prof.min_voxels,
                                                       scores=m.inplane_neighbour_mean(img, 2)[inside])
                        for name, v in simex_both(estimate, nm[box], sigma, draws).items():
                            rows.append(dict(sub=sub, ses=ses, acq_type=acq_type, snr=snr, n_repeats=int(k),
                                             candidate=name, roi=roi, hemi=hemi, value=profile_mean(v)))
        print(f"{geometry}: SNR {snr:g} measured", flush=True)
    base_truth = json.loads((ss.gdir(geometry) / f"snr-{sw.BASE_SNR:g}" / "truth.json").read_text())
    return sw.with_truth(pd.DataFrame(rows), base_truth)


def rule_table(s: pd.DataFrame) -> pd.DataFrame:
    """Per acquisition, ROI and candidate: what the decision rule looks at."""
    out = []
    for (cand, acq, roi), g in s.groupby(["candidate", "acq", "roi"]):
        spread = g.groupby("k").ratio.agg(lambda x: x.max() - x.min()).max()
        hi = g[g.snr >= 14]
        out.append(dict(candidate=cand, acq=acq, roi=roi, min_ratio=g.ratio.min(), max_ratio=g.ratio.max(),
                        spread=spread, min_r14=hi.r.min(), min_icc14=hi.icc.min()))
    return pd.DataFrame(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("geometry", choices=tuple(ss.GEOMETRIES))
    ap.add_argument("--draws", type=int, default=m.SIMEX_DRAWS)
    ap.add_argument("--acq", default="GREMT,FSE")
    ap.add_argument("--repeats", default="", help="comma-separated numbers of repeats (default: all)")
    a = ap.parse_args(argv)
    ks = [int(x) for x in a.repeats.split(",") if x]
    df = run(a.geometry, a.draws, a.acq.split(","), ks)
    res = ss.gdir(a.geometry) / "results"
    res.mkdir(parents=True, exist_ok=True)
    df.to_csv(res / "simex_values.tsv", sep="\t", index=False)
    s = ss.summary(df)
    s.to_csv(res / "simex_summary.tsv", sep="\t", index=False, float_format="%.4f")
    pd.set_option("display.width", 200)
    print(rule_table(s).sort_values(["acq", "roi", "candidate"]).to_string(index=False, float_format="%.3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
