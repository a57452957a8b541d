"""Group reports: ``group/group_report.html`` and ``group/group_qc.html``.

Offline HTML (no CDN, no JavaScript), one shared stylesheet inlined in both
pages from ``templates/group.css``, figures as files under ``group/figures/``
(SVG for forest plots; PNG for the figures with one point per participant, so
that thousands of participants stay light and fast).
Every string that comes from data is escaped by jinja2's autoescape.
Figures are drawn with :class:`matplotlib.figure.Figure` (no pyplot, no GUI backend).
"""
from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from ..contract import names
from . import outputs
from .collect import NA, QC_NUMERIC

TEMPLATES = Path(__file__).parent / "templates"
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
PRIMARY = ("cr", "cnr", "volume_mm3", "cr_roimean", "cr_threshold", "mtr", "mt_enhancement")
MAX_TABLE_ROWS = 5000
MAX_LABELS = 12
MAX_POINTS = 800  # points drawn per box/strip; boxes and flags always use every value


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    env.filters["urlpart"] = lambda s: quote(str(s), safe="-_.")
    return env


def _fmt(value, digits: int = 3) -> str:
    """Numbers with ``digits`` significant digits, ``n/a`` for missing."""
    if value is None:
        return NA
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return NA
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def _records(df: pd.DataFrame | None, limit: int = MAX_TABLE_ROWS) -> list[dict]:
    if df is None or not len(df):
        return []
    return df.head(limit).to_dict("records")


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------

def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    fig.set_layout_engine("constrained")
    return fig


def fig_distributions(table: pd.DataFrame, cols: list[tuple[str, str, str, str]], groups: list[str],
                      group_values: np.ndarray | None, measure: str):
    """Box + jittered points per roi x hemi, one box per group, for ``measure``."""
    rng = np.random.default_rng(0)
    cols = [c for c in cols if c[3] == measure and c[0] in table]
    if not cols:
        return None
    fig = _figure(max(6.0, 0.55 * len(cols) * max(1, len(groups)) + 1.5), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(groups))
    for j, g in enumerate(groups):
        color = COLORS[j % len(COLORS)]
        data, pos, px, py = [], [], [], []
        for i, (col, _, _, _) in enumerate(cols):
            y = table[col].to_numpy(dtype=float)
            sel = np.isfinite(y) & ((group_values == g) if group_values is not None else True)
            v = y[sel]
            if not len(v):
                continue
            p = i + (j - (len(groups) - 1) / 2) * width
            data.append(v)
            pos.append(p)
            shown = _subsample(v, rng)
            px.append(p + rng.uniform(-width * 0.3, width * 0.3, len(shown)))
            py.append(shown)
        if not data:
            continue
        ax.boxplot(data, positions=pos, widths=width * 0.8, showfliers=False, patch_artist=True,
                   manage_ticks=False, boxprops={"facecolor": color, "alpha": 0.3, "edgecolor": color},
                   medianprops={"color": color}, whiskerprops={"color": color}, capprops={"color": color})
        ax.scatter(np.concatenate(px), np.concatenate(py), s=5, alpha=0.5, color=color, linewidths=0,
                   label=g)
    ax.set_xticks(range(len(cols)), [f"{r} {h}" for _, r, h, _ in cols], rotation=30, ha="right")
    ax.set_ylabel(measure)
    if len(groups) > 1:
        ax.legend(frameon=False, fontsize="small", loc="best", markerscale=3)
    ax.set_title(f"{measure} by region" + (" and group" if len(groups) > 1 else ""))
    ax.grid(axis="y", alpha=0.3)
    return fig


def _subsample(v: np.ndarray, rng) -> np.ndarray:
    """At most MAX_POINTS values drawn at random (figures stay fast and legible with thousands)."""
    return v if len(v) <= MAX_POINTS else rng.choice(v, MAX_POINTS, replace=False)


def fig_predictor(table: pd.DataFrame, cols, x: np.ndarray, predictor: str, measure: str):
    cols = [c for c in cols if c[3] == measure and c[0] in table][:12]
    if not cols:
        return None
    ncol = min(3, len(cols))
    nrow = int(np.ceil(len(cols) / ncol))
    fig = _figure(3.0 * ncol, 2.6 * nrow)
    for k, (col, roi, hemi, _) in enumerate(cols):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        y = table[col].to_numpy(dtype=float)
        ok = np.isfinite(y) & np.isfinite(x)
        idx = np.flatnonzero(ok)
        shown = idx if len(idx) <= MAX_POINTS else np.random.default_rng(0).choice(idx, MAX_POINTS, replace=False)
        ax.scatter(x[shown], y[shown], s=5, alpha=0.5, color=COLORS[0], linewidths=0)
        if ok.sum() > 2:
            b = np.polyfit(x[ok], y[ok], 1)
            xs = np.linspace(x[ok].min(), x[ok].max(), 2)
            ax.plot(xs, np.polyval(b, xs), color=COLORS[3])
        ax.set_title(f"{roi} {hemi}", fontsize="small")
        ax.set_xlabel(predictor, fontsize="small")
        ax.set_ylabel(measure, fontsize="small")
    return fig


def fig_forest(stats: pd.DataFrame, tested_labels: list[str], measure: str):
    """Effect sizes with 95% CIs (the estimate's CI scaled like the effect size)."""
    rows = stats[(stats["measure"] == measure) & stats["term"].isin(tested_labels)]
    if not len(rows):
        return None
    est = rows["estimate"].to_numpy(dtype=float)
    es = rows["effect_size"].to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        scale = np.where(est != 0, es / est, np.nan)
    lo = rows["ci_low"].to_numpy(dtype=float) * scale
    hi = rows["ci_high"].to_numpy(dtype=float) * scale
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    labels = [f"{r} {h}" + (f"  {t}" if len(tested_labels) > 1 else "")
              for r, h, t in rows[["roi", "hemi", "term"]].itertuples(index=False)]
    fig = _figure(6.5, 0.28 * len(rows) + 1.3)
    ax = fig.add_subplot(1, 1, 1)
    ypos = np.arange(len(rows))[::-1]
    sig = rows["p_fdr"].to_numpy(dtype=float) < 0.05
    ax.errorbar(es, ypos, xerr=[es - lo, hi - es], fmt="none", ecolor="#777777", capsize=2)
    ax.scatter(es[~sig], ypos[~sig], color=COLORS[0], zorder=3, s=18, label="p_fdr ≥ 0.05")
    ax.scatter(es[sig], ypos[sig], color=COLORS[3], zorder=3, s=22, marker="D", label="p_fdr < 0.05")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ypos, labels, fontsize="small")
    kind = "Hedges' g" if any("[" in t and " vs " in t for t in tested_labels) else "standardized beta"
    ax.set_xlabel(f"{kind} (95% CI)")
    ax.set_title(f"Effect sizes: {measure}")
    ax.legend(frameon=False, fontsize="x-small", loc="best")
    ax.grid(axis="x", alpha=0.3)
    return fig


def fig_strips(frame: pd.DataFrame, columns: list[str], labels: list[str], title: str, flagged: dict):
    """Horizontal strip plot, one row per column; flagged points (robust z) in red."""
    rng = np.random.default_rng(0)
    cols = [(c, lab) for c, lab in zip(columns, labels) if c in frame and np.isfinite(frame[c].to_numpy(float)).any()]
    if not cols:
        return None
    fig = _figure(7.0, 0.3 * len(cols) + 1.4)
    ax = fig.add_subplot(1, 1, 1)
    ok_x, ok_y, bad_x, bad_y, bad_k = [], [], [], [], []
    for i, (c, _) in enumerate(cols):
        v = frame[c].to_numpy(dtype=float)
        ok = np.isfinite(v)
        yy = len(cols) - 1 - i + rng.uniform(-0.25, 0.25, len(v))
        bad = flagged.get(c, np.zeros(len(v), dtype=bool)) & ok
        keep = np.flatnonzero(ok & ~bad)
        if len(keep) > MAX_POINTS:
            keep = np.sort(rng.choice(keep, MAX_POINTS, replace=False))
        ok_x.append(v[keep])
        ok_y.append(yy[keep])
        bad_x.append(v[bad])
        bad_y.append(yy[bad])
        bad_k.append(np.flatnonzero(bad))
    ax.scatter(np.concatenate(ok_x), np.concatenate(ok_y), s=5, alpha=0.45, color=COLORS[0], linewidths=0)
    bx, by, bk = np.concatenate(bad_x), np.concatenate(bad_y), np.concatenate(bad_k)
    if len(bx):
        ax.scatter(bx, by, s=16, color=COLORS[3], marker="x", linewidths=1)
        for x, y, k in list(zip(bx, by, bk))[:MAX_LABELS]:
            ax.annotate(str(frame["participant_id"].iat[int(k)]), (x, y), fontsize=6, xytext=(3, 2),
                        textcoords="offset points", color=COLORS[3])
    ax.set_yticks(range(len(cols))[::-1], [lab for _, lab in cols], fontsize="small")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _save(fig, group_dir: Path, name: str, log) -> str | None:
    if fig is None:
        return None
    try:
        outputs.save_figure(fig, names.GroupFiles(Path(group_dir)).figures / name)
    except Exception as exc:  # a figure must never stop the group level
        log.warning("figure %s failed: %s", name, exc)
        return None
    return f"figures/{name}"


# ---------------------------------------------------------------------------
# pages
# ---------------------------------------------------------------------------

def write_reports(group_dir: Path, *, coll, wide, analysis, design, stats, change, vox, status, outliers, qc,
                  harmonization, model_meta, n_permutations, logger=None) -> None:
    from .. import __version__

    log = logger or logging.getLogger("nmbids")
    env = _env()
    group_dir = Path(group_dir)

    # ---- the analysis table as fitted
    if design.has_test:
        table = design.frame.merge(analysis, on="participant_id", how="left", suffixes=("", "_a"))
    else:
        table = analysis
    groups = design.levels if design.group_column else ["all"]
    gvals = table["_group"].astype(str).to_numpy() if design.group_column else None

    figures = []
    for measure in PRIMARY:
        if len(figures) >= 3:
            break
        if design.predictor:
            fig = fig_predictor(table, wide.outcomes, table["x_pred"].to_numpy(dtype=float), design.predictor,
                                measure)
        else:
            fig = fig_distributions(table, wide.outcomes, groups, gvals, measure)
        path = _save(fig, group_dir, f"group_distribution_{measure}.png", log)
        if path:
            figures.append({"path": path, "caption": f"{measure} per region"
                            + (f" by {design.group_column}" if design.group_column else "")
                            + (" (ComBat-harmonised)" if harmonization.get("Applied") else "")
                            + (f"; boxes use every value, at most {MAX_POINTS} random points are drawn per box"
                               if len(table) > MAX_POINTS else "")})
    forests = []
    tested = [t.label for t in design.tested]
    for measure in PRIMARY:
        path = _save(fig_forest(stats, tested, measure), group_dir, f"group_forest_{measure}.svg", log)
        if path:
            forests.append({"path": path, "caption": f"Effect sizes for {measure}"})

    tested_rows = stats[stats["term"].isin(tested)].sort_values("p", kind="stable")
    n_by_group = (design.frame["_group"].astype(str).value_counts().reindex(design.levels).fillna(0).astype(int)
                  .to_dict() if design.group_column and design.has_test else {})
    excluded = status[status["reason"] != NA]
    common = {"version": __version__, "n_permutations": n_permutations}
    page = env.get_template("group_report.html").render(
        title="nmbids group report", page="report", **common,
        n_included=int((status["has_measures"] == "yes").sum()), n_total=len(status),
        n_model=len(design.frame) if design.has_test else 0, n_by_group=n_by_group, design=design,
        model=model_meta, harmonization=harmonization, figures=figures, forests=forests,
        stats_rows=_records(tested_rows), n_stats_rows=len(tested_rows),
        covariate_rows=_records(stats[~stats["term"].isin(tested)]),
        n_sig=int((tested_rows["p_fdr"] < 0.05).sum()),
        change_rows=_records(change), vox=vox, excluded=_records(excluded),
        included=_records(status[status["has_measures"] == "yes"]))
    outputs.write_text(names.GroupFiles(group_dir).report, page)

    # ---- QC page
    flagged: dict[str, np.ndarray] = {}
    qc_figs = []
    wt = wide.table
    from .stats import OUTLIER_Z, robust_z

    for col, *_ in wide.outcomes:
        z = robust_z(wt[col].to_numpy(dtype=float))
        flagged[col] = np.abs(np.nan_to_num(z)) > OUTLIER_Z
    measures = list(dict.fromkeys(m for _, _, _, m in wide.outcomes))
    for m in measures:
        cols = [(c, f"{r} {h}") for c, r, h, mm in wide.outcomes if mm == m]
        fig = fig_strips(wt, [c for c, _ in cols], [lab for _, lab in cols], f"{m} (x: |robust z| > {OUTLIER_Z})",
                         flagged)
        path = _save(fig, group_dir, f"qc_distribution_{m}.png", log)
        if path:
            qc_figs.append({"path": path, "caption": f"{m}, every participant and session"
                            + (f" (every flagged value; at most {MAX_POINTS} random others per row)"
                               if len(wt) > MAX_POINTS else "")})
    qflag = {}
    for c in QC_NUMERIC:
        if c in qc:
            qflag[c] = np.abs(np.nan_to_num(robust_z(qc[c].to_numpy(dtype=float)))) > OUTLIER_Z
    qcols = [c for c in QC_NUMERIC if c in qc and np.isfinite(qc[c].to_numpy(float)).any()]
    if qcols:
        # one panel per metric would be better for different scales: z-score them for one overview
        zf = qc[["participant_id"]].copy()
        for c in qcols:
            v = qc[c].to_numpy(dtype=float)
            z = robust_z(v)
            zf[c] = z
        path = _save(fig_strips(zf, qcols, qcols, f"QC metrics, robust z (x: |z| > {OUTLIER_Z})", qflag),
                     group_dir, "qc_metrics.png", log)
        if path:
            qc_figs.append({"path": path, "caption": "QC metrics as robust z-scores"})
    qc_rows = qc.copy()
    qc_page = env.get_template("group_qc.html").render(
        title="nmbids group QC", page="qc", **common, outliers=_records(outliers), n_outliers=len(outliers),
        threshold=OUTLIER_Z, figures=qc_figs, qc_rows=_records(qc_rows), n_qc=len(qc_rows),
        qc_columns=list(qc_rows.columns), status=_records(status), max_rows=MAX_TABLE_ROWS)
    outputs.write_text(names.GroupFiles(group_dir).qc_report, qc_page)
