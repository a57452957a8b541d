"""Tables, figures and docs/validation.md from the result tables of ``validate.py``.

Every number in the document comes from ``results/*.tsv`` and ``results/run.json``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nmbids.acquisitions import NM_N4_SPLINE_MM, REF_STATS
from nmbids.measures import icc_2_1

from . import stats as st
from .measure import METHODS, spacing_label

ROIS = ("SN", "VTA", "LC")
ACQ_NAME = {"GREMT": "GRE-MT", "FSE": "FSE", "MTR": "MT pair"}
LIT_D = (0.4, 1.0)
ICC_TARGET = {"SN": 0.9, "LC": 0.75}
ICC_LIT = {"SN": "0.72–0.90", "LC": "0.53–0.63"}


# ----------------------------------------------------------------------------- helpers
def fmt(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{x:+.{-nd}f}" if nd < 0 else f"{x:.{nd}f}"
    return str(x)


def md_table(df: pd.DataFrame, nd: dict | None = None) -> str:
    nd = nd or {}
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c], nd.get(c, 3)) for c in cols) + " |")
    return "\n".join(lines)


def rec_row(g: pd.DataFrame) -> dict:
    return st.recovery(g["est"].to_numpy(), g["true"].to_numpy())


def sessions_wide(df: pd.DataFrame, value="value") -> np.ndarray:
    """``value`` as subjects x (ses-1, ses-2), complete subjects only."""
    w = df.pivot_table(index="sub", columns="ses", values=value, aggfunc="first")
    return w.reindex(columns=["ses-1", "ses-2"]).dropna().to_numpy()


def icc_of(df: pd.DataFrame, value="value") -> tuple[float, int]:
    """ICC(2,1) of ``value`` over ses-1/ses-2, one row per subject; (icc, n subjects)."""
    w = sessions_wide(df, value)
    return st_icc(w), len(w)


def st_icc(x: np.ndarray) -> float:
    return icc_2_1(x) if x.shape[0] >= 2 else float("nan")


# ----------------------------------------------------------------------------- analyses
def acq_table(pairs: pd.DataFrame) -> pd.DataFrame:
    b = pairs[(pairs.cohort == "baseline") & pairs.hemi.isin(["L", "R"])]
    rows = []
    for acq, measure in (("GREMT", "cr"), ("FSE", "cr"), ("MTR", "mtr"), ("MTR", "mtr_roimean"),
                         ("MTR", "mtr_threshold")):
        for roi in ROIS:
            g = b[(b.acq_type == acq) & (b.measure == measure) & (b.roi == roi)]
            if len(g):
                rows.append(dict(acquisition=ACQ_NAME[acq], measure=measure, roi=roi, **rec_row(g)))
    return pd.DataFrame(rows)


def condition_table(pairs: pd.DataFrame, meta: dict) -> pd.DataFrame:
    n_cond = meta["plan"]["n_condition"]
    keep_subs = {f"sub-{i + 1:02d}" for i in range(n_cond)}
    base_levels = {"snr": "25", "max_tilt_deg": "15", "slice_mm": "2", "motion_mm": "1"}
    rows = []
    for factor, levels in meta["conditions"].items():
        for level in levels:
            cohort = "baseline" if level == base_levels.get(factor) else f"{factor}-{level}"
            g0 = pairs[(pairs.cohort == cohort) & (pairs.acq_type == "GREMT") & (pairs.measure == "cr")
                       & pairs.hemi.isin(["L", "R"]) & pairs["sub"].isin(keep_subs)]
            for roi in ROIS:
                g = g0[g0.roi == roi]
                rows.append(dict(factor=factor, level=level, roi=roi, cohort=cohort, **rec_row(g)))
    return pd.DataFrame(rows)


def lc_table(lc: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for acq, g in lc.groupby("acq_type"):
        rows.append(dict(acquisition=ACQ_NAME[acq], n=len(g), n_empty=int((g.n_found == 0).sum()),
                         mean_error_mm=g.error_mm.mean(), median_error_mm=g.error_mm.median(),
                         max_error_mm=g.error_mm.max(), mean_dx=g.dx.mean(), mean_dy=g.dy.mean(),
                         mean_dz=g.dz.mean(), search_region_error_mm=g.search_region_error_mm.mean()))
    return pd.DataFrame(rows)


def volume_table(pairs: pd.DataFrame) -> pd.DataFrame:
    v = pairs[(pairs.measure == "volume_mm3") & pairs.hemi.isin(["L", "R"]) & pairs.cohort.isin(["baseline", "icc"])]
    rows = []
    for (acq, roi), g in v.groupby(["acq_type", "roi"]):
        r = rec_row(g)
        rows.append(dict(acquisition=ACQ_NAME[acq], roi=roi, n=r["n"], true_mean_mm3=g.true.mean(),
                         measured_mean_mm3=g.est.mean(), ratio=g.est.mean() / g.true.mean(), r=r["r"],
                         slope=r["slope"]))
    return pd.DataFrame(rows)


def icc_table(pairs: pd.DataFrame, oracle: pd.DataFrame) -> pd.DataFrame:
    """ICC(2,1) of the default ``cr`` and, beside it, of the CR of the true nucleus (``oracle_cr``)."""
    c = pairs[(pairs.cohort == "icc") & (pairs.acq_type == "GREMT") & (pairs.measure == "cr")]
    rows = []
    for roi in ROIS:
        for hemi in ("bilateral", "L", "R"):
            g = c[(c.roi == roi) & (c.hemi == hemi)]
            icc, n = icc_of(g, "est")
            lo, hi = st.icc_2_1_ci(sessions_wide(g, "est"))
            o = oracle[(oracle.roi == roi) & (oracle.hemi == hemi)] if len(oracle) else oracle
            icc_o = icc_of(o)[0] if len(o) else float("nan")
            s1 = g[g.ses == "ses-1"]
            rows.append(dict(roi=roi, hemi=hemi, n_subjects=n, icc_2_1=icc, ci95_low=lo, ci95_high=hi,
                             icc_true_nucleus=icc_o,
                             true_sd=s1.true.std(ddof=1), measured_sd=s1.est.std(ddof=1),
                             target=ICC_TARGET.get(roi, float("nan")) if hemi == "bilateral" else float("nan")))
    return pd.DataFrame(rows)


def bias_table(bias: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per bias field (N4 spacing or the true field) and ROI: the SD and RMS of the field's
    error in the ROI-to-reference ratio (%), and the test-retest ICC and r against truth of
    the CR measured after dividing by it."""
    truth = pairs[(pairs.cohort == "icc") & (pairs.acq_type == "GREMT") & (pairs.measure == "cr")
                  & (pairs.hemi == "bilateral")][["sub", "ses", "roi", "true"]]
    b = bias.merge(truth, on=["sub", "ses", "roi"], how="left")
    rows = []
    for (roi, field), g in b.groupby(["roi", "field"], sort=False):
        e = g.field_error.to_numpy() * 100
        ok = g.dropna(subset=["value", "true"])
        rows.append(dict(roi=roi, field=field, n=len(g), error_sd_pct=np.std(e, ddof=1),
                         error_rms_pct=np.sqrt(np.mean(e ** 2)), icc=icc_of(g)[0],
                         r=np.corrcoef(ok.value, ok.true)[0, 1] if len(ok) > 2 else np.nan))
    return pd.DataFrame(rows)


def variant_scores(v: pd.DataFrame, acq: str, roi: str, stat: str, method: str, space: str) -> dict:
    """r and bias against truth on the baseline cohort (L, R), ICC on the icc cohort (bilateral)."""
    sel = v[(v.acq_type == acq) & (v.roi == roi) & (v.stat == stat) & (v.method == method) & (v.space == space)]
    b = sel[(sel.cohort == "baseline") & sel.hemi.isin(["L", "R"])]
    r = st.recovery(b.value.to_numpy(float), b.true_cr.to_numpy(float))
    i = sel[(sel.cohort == "icc") & (sel.hemi == "bilateral")]
    icc, n_icc = icc_of(i) if len(i) else (float("nan"), 0)
    return dict(n=r["n"], n_missing=r["n_missing"], bias=r["bias"], slope=r["slope"], r=r["r"], icc=icc,
                n_icc=n_icc)


def choice_tables(v: pd.DataFrame, meta: dict) -> dict:
    defaults = meta["defaults"]
    out = {}
    # reference statistic: GRE-MT (and FSE) with the profile's default method, native space
    rows, recs = [], []
    for acq in ("GREMT", "FSE"):
        per = {stat: {roi: variant_scores(v, acq, roi, stat, "default", "native") for roi in ROIS}
               for stat in REF_STATS}
        rows += [dict(acquisition=ACQ_NAME[acq], roi=roi, ref_stat=stat, **s)
                 for stat, by_roi in per.items() for roi, s in by_roi.items()]
        # a ROI that tracks the truth under no statistic (r < 0.5) does not vote
        voting = [roi for roi in ROIS if np.nanmax([per[stat][roi]["r"] for stat in per] + [-1.0]) >= 0.5] or ROIS
        agg = {}
        for stat, by_roi in per.items():
            sel = [by_roi[roi] for roi in voting]
            agg[stat] = {k: float(np.nanmean([p[k] for p in sel])) if any(np.isfinite(p[k]) for p in sel)
                         else float("nan") for k in ("r", "icc")}
            agg[stat]["bias"] = float(np.nanmean([abs(p["bias"]) for p in sel]))
        recs.append(dict(acquisition=ACQ_NAME[acq], default=defaults["ref_stat"], voting=voting,
                         **st.recommend(agg, defaults["ref_stat"])))
    out["ref_stat"] = (pd.DataFrame(rows), recs)
    # CR method per acquisition and ROI (default reference statistic)
    rows, recs = [], []
    for acq in ("GREMT", "FSE"):
        for roi in ROIS:
            sc = {}
            for method in METHODS:
                s = variant_scores(v, acq, roi, defaults["ref_stat"], method, "native")
                rows.append(dict(acquisition=ACQ_NAME[acq], roi=roi, method=method, **s))
                sc[method] = s
            default = defaults["cr_method"][acq][roi]
            recs.append(dict(acquisition=ACQ_NAME[acq], roi=roi, default=default, **st.recommend(sc, default)))
    out["method"] = (pd.DataFrame(rows), recs)
    # native vs template space (default reference statistic and method)
    rows, recs = [], []
    for acq in ("GREMT", "FSE"):
        for roi in ROIS:
            sc = {}
            for space in ("native", "template"):
                s = variant_scores(v, acq, roi, defaults["ref_stat"], "default", space)
                rows.append(dict(acquisition=ACQ_NAME[acq], roi=roi, space=space, **s))
                sc[space] = s
            default = defaults.get("space", {}).get(acq, {}).get(roi, "native")
            recs.append(dict(acquisition=ACQ_NAME[acq], roi=roi, default=default, **st.recommend(sc, default)))
    out["space"] = (pd.DataFrame(rows), recs)
    return out


def power_table(icc: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for roi in ("SN", "LC"):
        r = icc[(icc.roi == roi) & (icc.hemi == "bilateral")].iloc[0]
        for n in (20, 50):
            d_obs = st.min_detectable_d(n)
            d_true = st.true_d_needed(d_obs, r.icc_2_1)
            rows.append(dict(roi=roi, n_per_group=n, icc=r.icc_2_1, measured_sd=r.measured_sd,
                             min_d_observed=d_obs, min_d_true=d_true, min_cr_difference=d_obs * r.measured_sd,
                             literature_d="0.4–1", detects_d_0_4=bool(d_true <= LIT_D[0]),
                             detects_d_1=bool(d_true <= LIT_D[1])))
    return pd.DataFrame(rows)


def misreg_table(mr: pd.DataFrame) -> pd.DataFrame:
    if not len(mr):
        return pd.DataFrame()
    base = mr[mr.shift_mm == 0].set_index(["sub", "ses", "acq_type", "roi", "hemi"]).value
    rows = []
    for (acq, roi, shift), g in mr.groupby(["acq_type", "roi", "shift_mm"]):
        b = base.reindex(pd.MultiIndex.from_frame(g[["sub", "ses", "acq_type", "roi", "hemi"]])).to_numpy()
        delta = g.value.to_numpy(float) - b
        rec = st.recovery(g.value.to_numpy(float), g.true_cr.to_numpy(float))
        rows.append(dict(acquisition=ACQ_NAME[acq], roi=roi, shift_mm=shift, n=rec["n"], n_missing=rec["n_missing"],
                         mean_change=float(np.nanmean(delta)), mean_abs_change=float(np.nanmean(np.abs(delta))),
                         bias=rec["bias"], r=rec["r"]))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9})
    return plt


COLORS = {"SN": "#1b9e77", "VTA": "#d95f02", "LC": "#7570b3"}


def fig_recovery(pairs: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    b = pairs[(pairs.cohort == "baseline") & pairs.hemi.isin(["L", "R"])]
    panels = [("GREMT", "cr", "GRE-MT: CR"), ("FSE", "cr", "FSE: CR"), ("MTR", "mtr", "MT pair: MTR (%)")]
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
    for ax, (acq, measure, title) in zip(axes, panels):
        g = b[(b.acq_type == acq) & (b.measure == measure)]
        for roi in ROIS:
            h = g[g.roi == roi]
            ax.scatter(h.true, h.est, s=12, color=COLORS[roi], label=roi)
        if len(g):
            lo, hi = np.nanmin([g.true.min(), g.est.min()]), np.nanmax([g.true.max(), g.est.max()])
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
        ax.set_title(title)
        ax.set_xlabel("true")
    axes[0].set_ylabel("measured")
    axes[0].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_conditions(ct: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    factors = list(dict.fromkeys(ct.factor))
    fig, axes = plt.subplots(2, len(factors), figsize=(1.9 * len(factors) + 0.6, 3.6), squeeze=False)
    for j, f in enumerate(factors):
        g = ct[ct.factor == f]
        levels = list(dict.fromkeys(g.level))
        x = np.arange(len(levels))
        for roi in ROIS:
            h = g[g.roi == roi].set_index("level").reindex(levels)
            axes[0, j].plot(x, h.r, "o-", color=COLORS[roi], label=roi, ms=3)
            axes[1, j].plot(x, h.bias, "o-", color=COLORS[roi], ms=3)
        for i in (0, 1):
            axes[i, j].set_xticks(x, levels)
        axes[1, j].set_xlabel(f)
        axes[1, j].axhline(0, color="k", lw=0.5)
    axes[0, 0].set_ylabel("r with truth")
    axes[1, 0].set_ylabel("bias (CR)")
    axes[0, 0].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_icc(pairs: pd.DataFrame, icc: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    c = pairs[(pairs.cohort == "icc") & (pairs.acq_type == "GREMT") & (pairs.measure == "cr")
              & (pairs.hemi == "bilateral")]
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
    for ax, roi in zip(axes, ROIS):
        w = c[c.roi == roi].pivot_table(index="sub", columns="ses", values="est", aggfunc="first")
        if {"ses-1", "ses-2"} <= set(w.columns):
            ax.scatter(w["ses-1"], w["ses-2"], s=14, color=COLORS[roi])
            lo, hi = np.nanmin(w.to_numpy()), np.nanmax(w.to_numpy())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
        val = icc[(icc.roi == roi) & (icc.hemi == "bilateral")].icc_2_1
        ax.set_title(f"{roi} CR, ICC(2,1) = {fmt(float(val.iloc[0]) if len(val) else None, 2)}")
        ax.set_xlabel("session 1")
    axes[0].set_ylabel("session 2")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_misreg(mt: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 2.5))
    for acq, ls in (("GRE-MT", "-"), ("FSE", ":")):
        for roi in ROIS:
            g = mt[(mt.acquisition == acq) & (mt.roi == roi)]
            if len(g):
                axes[0].plot(g.shift_mm, g.mean_abs_change, ls, marker="o", ms=3, color=COLORS[roi],
                             label=f"{acq} {roi}")
                axes[1].plot(g.shift_mm, g.mean_change, ls, marker="o", ms=3, color=COLORS[roi])
    axes[0].set_ylabel("mean |change in CR|")
    axes[1].set_ylabel("mean change in CR")
    for ax in axes:
        ax.set_xlabel("NM→T1w shift (mm)")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[0].legend(frameon=False, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- document
def _rec_text(rec: dict, what: str) -> str:
    sc = ", ".join(f"{k} {fmt(v, 3)}" for k, v in rec["score"].items())
    left_out = [roi for roi in ROIS if "voting" in rec and roi not in rec["voting"]]
    if left_out:
        sc += f"; {', '.join(left_out)} left out: r < 0.5 whichever the choice"
    if rec.get("none_good"):
        return f"{what}: no choice tracks the truth (score {sc}); the default {rec['default']} stays."
    if rec["keep_default"]:
        return f"{what}: keep **{rec['default']}** (score {sc})."
    return f"{what}: **{rec['best']}** scores better than the default {rec['default']} (score {sc})."


def write(results: Path, docs: Path, meta: dict) -> None:
    results, docs = Path(results), Path(docs)
    figdir = docs / "validation"
    figdir.mkdir(parents=True, exist_ok=True)
    read = lambda n: pd.read_csv(results / n, sep="\t") if (results / n).stat().st_size > 1 else pd.DataFrame()  # noqa: E731
    pairs, lc, v, mr = (read(n) for n in ("pairs.tsv", "lc_localisation.tsv", "variants.tsv", "misregistration.tsv"))
    oracle = read("oracle.tsv") if (results / "oracle.tsv").exists() else pd.DataFrame()
    bias = read("bias_field.tsv") if (results / "bias_field.tsv").exists() else pd.DataFrame()
    for df in (pairs, lc, v, mr, oracle, bias):
        if "ses" in df:
            df["ses"] = df["ses"].astype(str)

    at = acq_table(pairs)
    ct = condition_table(pairs, meta)
    lt = lc_table(lc) if len(lc) else pd.DataFrame()
    vt = volume_table(pairs)
    it = icc_table(pairs, oracle)
    ch = choice_tables(v, meta) if len(v) else {}
    pt = power_table(it)
    mt = misreg_table(mr)
    bt = bias_table(bias, pairs) if len(bias) else pd.DataFrame()
    tables = {"recovery_by_acquisition": at, "recovery_by_condition": ct, "lc_localisation": lt,
              "volume": vt, "icc": it, "power": pt, "misregistration": mt, "bias_field": bt}
    for k, (t, recs) in ch.items():
        tables[f"choice_{k}"] = t
        tables[f"choice_{k}_recommendation"] = pd.DataFrame(
            [{kk: (vv if kk != "score" else "; ".join(f"{a}={fmt(b)}" for a, b in vv.items()))
              for kk, vv in r.items()} for r in recs])
    for k, t in tables.items():
        t.to_csv(figdir / f"{k}.tsv", sep="\t", index=False, float_format="%.4f", na_rep="n/a")
    fig_recovery(pairs, figdir / "recovery_by_acquisition.png")
    fig_conditions(ct, figdir / "recovery_by_condition.png")
    fig_icc(pairs, it, figdir / "icc.png")
    if len(mt):
        fig_misreg(mt, figdir / "misregistration.png")
    (docs / "validation.md").write_text(render(meta, tables, ch, lc, mr))


def render(meta: dict, t: dict, ch: dict, lc: pd.DataFrame, mr: pd.DataFrame) -> str:
    nd = {"n": 0, "n_missing": 0, "n_subjects": 0, "n_icc": 0, "n_per_group": 0, "n_found": 0, "n_empty": 0,
          "bias": -3, "mean_change": -3, "mean_dx": -2, "mean_dy": -2, "mean_dz": -2, "intercept": -3,
          "true_mean_mm3": 1, "measured_mean_mm3": 1, "ratio": 2, "shift_mm": 1,
          "mean_error_mm": 2, "median_error_mm": 2, "max_error_mm": 2, "search_region_error_mm": 2}
    cols = ["n", "n_missing", "bias", "slope", "r"]
    P = meta["phantom"]
    B = meta["baseline"]
    nuc = ("AAL3 (SN pars compacta, VTA and LC labels of "
           "`tpl-MNI152NLin6Asym_res-01_atlas-AAL3_dseg.nii.gz`, Rolls et al. 2020), a source independent "
           "of nmbids's own search regions; read from `../shared`, never committed") if meta["nuclei_is_aal3"] \
        else "the phantom's builtin nuclei (AAL3 was not found): not independent of nmbids's ROI placement"
    L = []
    L.append("# Validation on phantoms\n")
    L.append("Generated by `make validate` (`benchmarks/validate.py`); every number below is what that run "
             "measured. Do not edit by hand: re-run the script.\n")
    if meta.get("quick"):
        L.append("> **Quick smoke run (`--quick`)**: one to three subjects per cohort; the numbers are not "
                 "meaningful.\n")
    L.append("| run | |\n|---|---|")
    L.append(f"| date | {meta['date']} |\n| machine | {meta['machine']} |\n| git commit | {meta['commit']} |")
    L.append(f"| nmbids settings | `--registration-quality {meta['registration_quality']} --nprocs {meta['nprocs']}`, "
             f"defaults otherwise (reference statistic `{meta['defaults']['ref_stat']}`) |")
    L.append(f"| wall time | {meta['elapsed_min']} min (simulation, nmbids, analysis) |")
    L.append(f"| nuclei | {nuc} |\n")
    L.append("## Phantom cohorts\n")
    L.append(f"The nmbids digital phantom (`nmbids-simulate`, see `nmbids/phantom/`): T1w {P['t1w_res']} mm, "
             f"NM {P['nm_inplane']} mm in plane over {P['nm_fov'][0]:g} × {P['nm_fov'][1]:g} mm, "
             f"{P['repeats']} repeats. Baseline: SNR {B['snr']:g} per repeat, slab tilt up to {B['max_tilt']:g}°, "
             f"{B['nm_slice']:g} mm slices (× {B['nm_slices']}), motion between repeats up to "
             f"{B['motion_mm']:g} mm / {B['motion_deg']:g}°. Each condition cohort changes one factor and "
             "holds the same simulated subjects (same seed) as the baseline. CR truth is drawn from a wide "
             "range (SN 0.10–0.30) so that slope and correlation can be estimated; the test–retest cohort "
             f"draws it with a realistic spread (`--cr-sd {meta['icc_cr_sd']}` plus the age slope).\n")
    L.append("| cohort | subjects | sessions | acquisitions | nmbids time (s) |\n|---|---|---|---|---|")
    runs = {r["name"]: r for r in meta["runs"]}
    for name, c in meta["cohorts"].items():
        L.append(f"| {c['description']} | {c['n_subjects']} | {c.get('sessions', 1)} | "
                 f"{', '.join(c['acq'])} | {runs.get(name, {}).get('nmbids_s', 'not run')} |")
    failed = [r["name"] for r in meta["runs"] if not r["ok"] and not r.get("skipped")]
    skipped = [r["name"] for r in meta["runs"] if r.get("skipped")]
    if failed:
        L.append(f"\nnmbids exited non-zero on: {', '.join(failed)}.")
    if skipped:
        L.append(f"\nNot run (the run's time budget was spent): {', '.join(skipped)}; their rows below are n/a.")
    L.append("\nBias is mean(measured − true); slope is the OLS slope of measured on true; r is Pearson's; "
             "each point is one hemisphere of one subject. `n_missing`: values the pipeline reported as n/a.\n")

    L.append("## Recovery by acquisition type (baseline)\n")
    L.append("![recovery](validation/recovery_by_acquisition.png)\n")
    L.append(md_table(t["recovery_by_acquisition"][["acquisition", "measure", "roi"] + cols + ["mae"]], nd))
    L.append("\nMT pairs report MTR (percent), not CR (see methods): `mtr` is the nucleus's MTR, "
             "`mtr_roimean` the search-region mean (the `mtr` of runs before it). Their validation across "
             "two truth regimes, SNR and repeats: [validation_mtr.md](validation_mtr.md).\n")

    L.append("## Recovery across acquisition conditions (GRE-MT, default `cr`)\n")
    L.append(f"The same {meta['plan']['n_condition']} subjects in every condition (the baseline's first "
             f"{meta['plan']['n_condition']}).\n")
    L.append("![conditions](validation/recovery_by_condition.png)\n")
    L.append(md_table(t["recovery_by_condition"][["factor", "level", "roi"] + cols], nd))

    L.append("\n## LC localisation and volume recovery\n")
    if len(t["lc_localisation"]):
        L.append("Centroid (world mm, scanner space) of the LC voxels the pipeline finds (LC search region ∩ "
                 "threshold-passing voxels, native NM space) against the centroid of the truth LC label; "
                 "`search_region_error_mm`: the same for the whole search region. Baseline and test–retest "
                 "cohorts, one row per hemisphere and session.\n")
        L.append(md_table(t["lc_localisation"], nd))
    L.append("\nVolume (`volume_mm3`, threshold-passing voxels) against the true native nucleus volume:\n")
    L.append(md_table(t["volume"], nd))

    L.append("\n## Test–retest reliability (GRE-MT)\n")
    L.append("Two sessions per subject: same anatomy and true CR, new head position, slab, noise and motion. "
             "ICC(2,1) (`nmbids.measures.icc_2_1`) of the default `cr`, with its 95 % confidence interval "
             "(McGraw KO, Wong SP (1996) Psychol Methods 1:30–46, case 2A; with 12 subjects it is wide, and "
             "the ICC of one method has moved by up to 0.09 between two runs of the same images). "
             "`true_sd`/`measured_sd`: "
             "between-subject SD in session 1 (published SN CR SD is about 0.025). `icc_true_nucleus`: the "
             "same ICC for the CR of the true nucleus, the mean over the voxels at least 90 % inside it "
             "(the phantom's `truth_probseg`, native grid) against the reference value the pipeline wrote: "
             "what a perfect ROI would measure on the same images with the same reference. What keeps it "
             "below 1 is in the images (noise, the bias field between nucleus and reference region, partial "
             "volume), not in the ROIs; a method with another reference (LC: slice by slice) can exceed it.\n")
    L.append("![icc](validation/icc.png)\n")
    L.append(md_table(t["icc"], nd))
    for roi in ("SN", "LC"):
        r = t["icc"][(t["icc"].roi == roi) & (t["icc"].hemi == "bilateral")].iloc[0]
        ok = np.isfinite(r.icc_2_1) and r.icc_2_1 >= ICC_TARGET[roi]
        L.append(f"\n- {roi}: ICC(2,1) = {fmt(r.icc_2_1)} (95 % CI {fmt(r.ci95_low, 2)}–{fmt(r.ci95_high, 2)}) "
                 f"against a target of ≥ {ICC_TARGET[roi]} ({'met' if ok else '**not met**'}); the true nucleus "
                 f"reaches {fmt(r.icc_true_nucleus)} on the same images; the literature reports {ICC_LIT[roi]}.")

    L.append("\n\n## Choices compared\n")
    L.append("Each variant is computed from the images the run wrote, with the functions the pipeline "
             "calls (`nmbids.roi_measures.measure_grid` with the acquisition profile, the method or reference "
             "statistic swapped). `r`/`bias`/`slope`: baseline cohort against truth; `icc`: test–retest "
             "cohort (GRE-MT only). A choice's score is the mean of its r and ICC; the default is kept unless "
             f"another beats it by more than {st.TOLERANCE:g}, the spread of the scores between two runs "
             "of the same images (see `benchmarks/validation/stats.py`).\n")
    labels = {"ref_stat": ("Reference statistic", "ref_stat"), "method": ("CR method", "method"),
              "space": ("Native versus template space", "space")}
    for k, (title, col) in labels.items():
        if k not in ch:
            continue
        tab, recs = ch[k]
        L.append(f"### {title}\n")
        front = ["acquisition", "roi", col]
        L.append(md_table(tab[front + ["n", "n_missing", "bias", "slope", "r", "icc"]], nd))
        L.append("")
        for rec in recs:
            what = rec["acquisition"] + (f" {rec['roi']}" if "roi" in rec else "")
            L.append("- " + _rec_text(rec, what))
        L.append("")
    if len(t["bias_field"]):
        bt = t["bias_field"]
        L.append("### Bias-field correction: N4 control-point spacing\n")
        L.append("On the test–retest cohort (GRE-MT), the repeats realigned and averaged again from the raw "
                 "images as the pipeline does, then divided by an N4 field fitted with B-spline control points "
                 "every 200, 100 or 50 mm, or with one mesh element over the slab (ANTsPy's default), or by "
                 "the phantom's true field; measured with the pipeline's ROIs. `error_sd_pct`/`error_rms_pct`: "
                 "SD and RMS over sessions of the field's error in the ratio between the ROI and its "
                 "reference region (what it adds to CR/(1+CR)), in %. The pipeline uses "
                 f"{spacing_label(NM_N4_SPLINE_MM)} (`nmbids.acquisitions.NM_N4_SPLINE_MM`).\n")
        L.append(md_table(bt, {**nd, "error_sd_pct": 2, "error_rms_pct": 2}))
        sn = bt[(bt.roi == "SN") & (bt.field != "true field")]
        if len(sn):
            best = sn.loc[sn.error_sd_pct.idxmin()]
            L.append(f"\n- SN: the smallest field error is at {best.field} (SD {fmt(best.error_sd_pct, 2)} %, "
                     f"ICC {fmt(best.icc)}); with the true field the ICC is "
                     f"{fmt(bt[(bt.roi == 'SN') & (bt.field == 'true field')].icc.iloc[0])}.\n")
    changes = [(k, r) for k, (_, recs) in ch.items() for r in recs if not r["keep_default"]]
    L.append("### Before and after\n")
    if not changes:
        L.append("Every default was the best or within 0.01 of the best: no default changed.\n")
    else:
        L.append("Where a choice beat the default, the numbers under the default (before) and the "
                 "recommendation (after), from the tables above:\n")
        for k, r in changes:
            tab = ch[k][0]
            col = labels[k][1]
            sel = tab[tab.acquisition == r["acquisition"]]
            if "roi" in r:
                sel = sel[sel.roi == r["roi"]]
            for name, tag in ((r["default"], "before"), (r["best"], "after")):
                s = sel[sel[col] == name]
                L.append(f"- {r['acquisition']} {r.get('roi', 'all ROIs')}, {labels[k][0].lower()} {tag} "
                         f"({name}): r {', '.join(fmt(x) for x in s.r)}; bias {', '.join(fmt(x, -3) for x in s.bias)}; "
                         f"ICC {', '.join(fmt(x) for x in s.icc)}")
        L.append("")

    now = current_defaults()
    diffs = []
    if now["ref_stat"] != meta["defaults"]["ref_stat"]:
        diffs.append(f"reference statistic {meta['defaults']['ref_stat']} → {now['ref_stat']}")
    for acq, methods in now["cr_method"].items():
        for roi, method in methods.items():
            was = meta["defaults"]["cr_method"].get(acq, {}).get(roi)
            if was != method:
                diffs.append(f"{ACQ_NAME.get(acq, acq)} {roi} CR method {was} → {method}")
    for acq, spaces in now["space"].items():
        for roi, space in spaces.items():
            was = meta["defaults"].get("space", {}).get(acq, {}).get(roi, "native")
            if was != space:
                diffs.append(f"{ACQ_NAME.get(acq, acq)} {roi} measured in {was} → {space} space")
    if diffs:
        L.append("Defaults of nmbids changed after this run (see the recommendations above): "
                 + "; ".join(diffs) + ". The numbers above were measured with the old defaults; the 'after' "
                 "rows are what the new defaults give on the same images.\n")
    elif changes:
        L.append("No default of nmbids has been changed since this run.\n")
    L.append("The space of each ROI is part of its acquisition profile (`AcquisitionProfile.measure_space`); "
             "the `space` column of the measures table records it for every value. The rows of the space table "
             "are computed by this script from the written images, every ROI in both spaces.\n")
    if any(k == "method" and r.get("roi") == "LC" for k, r in changes):
        L.append("LC keeps the slice-wise method whatever its score: it gives the rostral, middle and "
                 "caudal thirds that the LC literature reports, which a volume of the brightest voxels does not.\n")

    fixes = Path(__file__).with_name("fixes.md")
    if fixes.is_file():
        L.append("## Fixes made from this validation\n")
        L.append(fixes.read_text().strip() + "\n")

    L.append("## Power\n")
    L.append("Smallest group difference detected with 80 % power (two-sided t-test, α = 0.05, equal groups; "
             "statsmodels `TTestIndPower`), from the test–retest cohort's measured between-subject SD and "
             "ICC. Measurement error attenuates effects: d_observed = d_true·√ICC, so `min_d_true` = "
             "`min_d_observed`/√ICC. Published NM-MRI group effects are d ≈ 0.4–1.\n")
    L.append(md_table(t["power"], {**nd, "min_d_observed": 2, "min_d_true": 2, "min_cr_difference": 4,
                                   "measured_sd": 4}))
    L.append("")
    for roi in ("SN", "LC"):
        for n in (20, 50):
            r = t["power"][(t["power"].roi == roi) & (t["power"].n_per_group == n)].iloc[0]
            if r.detects_d_0_4:
                s = "detects the whole literature range (d ≥ 0.4)"
            elif r.detects_d_1:
                s = f"detects true effects from d = {fmt(r.min_d_true, 2)} up, inside the literature range 0.4–1"
            else:
                s = "misses even d = 1"
            L.append(f"- {roi}, n = {n} per group: {s}.")

    L.append("\n## Sensitivity to registration error\n")
    if len(t["misregistration"]):
        same = mr[mr.shift_mm == 0].same_labels
        L.append("The NM→T1w rigid of each baseline subject is shifted by 1, 2 and 3 mm along x, y and z in "
                 "turn (ANTs physical space); the atlas is pulled into NM space through the shifted transform "
                 "(`nmbids.registration.pull_atlas_to_nm`) and CR measured again (the default reference "
                 f"statistic, {meta['defaults']['ref_stat']}, and the profile's methods). "
                 f"At shift 0 this reproduces {fmt(100 * float(same.mean()), 2)} % of the voxel labels the "
                 "pipeline wrote. Change is against shift 0, averaged over directions, subjects and hemispheres.\n")
        L.append("![misregistration](validation/misregistration.png)\n")
        L.append(md_table(t["misregistration"], nd))
        lost = t["misregistration"][t["misregistration"].n_missing > 0]
        if len(lost):
            L.append("\nValues that became n/a under a shift (the measure returned n/a, e.g. fewer than 5 voxels "
                     "above the threshold); the mean change at that shift is over the values left only:\n")
            for _, r in lost.iterrows():
                L.append(f"- {r.acquisition} {r.roi}, {fmt(r.shift_mm, 0)} mm: {fmt(r.n_missing)} of "
                         f"{fmt(r.n + r.n_missing)} n/a")
    else:
        L.append("Not measured in this run.\n")
    L.append("\n## Weaknesses found\n")
    L.extend(weaknesses(t))
    L.append("\nTables: `docs/validation/*.tsv`. Raw per-subject results stay in the run's `--out` folder.\n")
    return "\n".join(L) + "\n"


def current_defaults() -> dict:
    """The defaults of the installed nmbids (may differ from those of the run)."""
    from nmbids.acquisitions import PROFILES
    from nmbids.parser import build_parser

    return {"ref_stat": build_parser().get_default("ref_stat"),
            "cr_method": {a: dict(p.cr_method) for a, p in PROFILES.items() if p.report_cr},
            "space": {a: {roi: p.space_of(roi) for roi in p.references} for a, p in PROFILES.items() if p.report_cr}}


def weaknesses(t: dict) -> list[str]:
    """Automatic statements: which of the issue's bars the run did not meet."""
    out = []
    it = t["icc"]
    for roi in ("SN", "LC"):
        r = it[(it.roi == roi) & (it.hemi == "bilateral")].iloc[0]
        if not (np.isfinite(r.icc_2_1) and r.icc_2_1 >= ICC_TARGET[roi]):
            out.append(f"- Test–retest ICC of {roi} CR is {fmt(r.icc_2_1)}, below the target {ICC_TARGET[roi]} "
                       f"(the true nucleus reaches {fmt(r.icc_true_nucleus)} on the same images).")
    for _, r in t["recovery_by_acquisition"].iterrows():
        if r.measure.startswith("cr") and np.isfinite(r.r) and r.r < 0.8:
            out.append(f"- {r.acquisition} {r.roi} CR tracks the truth poorly (r = {fmt(r.r)}).")
        if r.measure.startswith("cr") and np.isfinite(r.slope) and not 0.7 <= r.slope <= 1.3:
            out.append(f"- {r.acquisition} {r.roi} CR slope {fmt(r.slope)}: differences between subjects are "
                       f"{'compressed' if r.slope < 1 else 'exaggerated'}.")
    ct = t["recovery_by_condition"]
    bad = ct[np.isfinite(ct.r) & (ct.r < 0.8)].drop_duplicates(["cohort", "roi"])
    for _, r in bad.iterrows():
        where = "baseline" if r.cohort == "baseline" else f"{r.factor} = {r.level}"
        out.append(f"- GRE-MT {r.roi} CR at {where} (3 subjects): r = {fmt(r.r)}.")
    mt = t["misregistration"]
    if len(mt):
        for _, r in mt[(mt.shift_mm == 2) & (mt.mean_abs_change > 0.02)].iterrows():
            out.append(f"- {r.acquisition} {r.roi}: a 2 mm NM→T1w error changes CR by "
                       f"{fmt(r.mean_abs_change)} on average.")
    n_missing = int(t["recovery_by_acquisition"].n_missing.sum())
    if n_missing:
        out.append(f"- {n_missing} baseline values were n/a.")
    return out or ["- None of the checks above flagged a weakness."]
