"""Validation of nmbids on phantom cohorts: writes docs/validation.md, docs/validation/*.png
and docs/validation/*.tsv (``make validate``).

    python benchmarks/validate.py [--quick] [--out DIR] [--registration-quality fast|default]
                                  [--nprocs N] [--report-only]

Cohorts (nmbids-simulate, nuclei from AAL3 when ../shared/data/atlases/AAL3 is present, else the
phantom's builtin nuclei) are run through ``nmbids ... participant`` (a subprocess of the nmbids
next to this Python), one cohort at a time. Measures are compared with truth.json; the written
images are measured again with nmbids's own functions for the choices compared (reference
statistic, CR method, native vs template space) and for a deliberate NM -> T1w
misregistration. Everything measured is kept under ``--out`` (``results/*.tsv``); the
document is written from those tables only (``--report-only`` rewrites it without
running anything).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from validation import measure, report  # noqa: E402
from validation.runs import run_participant_level, stamp  # noqa: E402

AAL3 = REPO.parent / "shared" / "data" / "atlases" / "AAL3" / "tpl-MNI152NLin6Asym_res-01_atlas-AAL3_dseg.nii.gz"
if not AAL3.exists():  # a worktree beside the main checkout: /work/<wt>/ -> /work/shared
    AAL3 = Path("/work/shared/data/atlases/AAL3/tpl-MNI152NLin6Asym_res-01_atlas-AAL3_dseg.nii.gz")

# Small phantom (as in the end-to-end tests): 1.5 mm T1w, 0.8 mm NM in plane over 110 x 120 mm.
PHANTOM = dict(t1w_res=1.5, nm_inplane=0.8, nm_fov=(110.0, 120.0), repeats=2)
BASELINE = dict(snr=25.0, max_tilt=15.0, nm_slice=2.0, nm_slices=20, motion_mm=1.0, motion_deg=1.0)
# Each condition changes one factor of the baseline; slices keep the slab ~40 mm thick.
CONDITIONS = {
    "snr": [("15", dict(snr=15.0)), ("25", {}), ("40", dict(snr=40.0))],
    "max_tilt_deg": [("0", dict(max_tilt=0.0)), ("15", {}), ("25", dict(max_tilt=25.0))],
    "slice_mm": [("1.5", dict(nm_slice=1.5, nm_slices=27)), ("2", {}), ("3", dict(nm_slice=3.0, nm_slices=13))],
    "motion_mm": [("0.3", dict(motion_mm=0.3, motion_deg=0.3)), ("1", {}), ("2", dict(motion_mm=2.0, motion_deg=2.0))],
}
FULL = dict(n_baseline=4, n_condition=3, n_icc=12, conditions=CONDITIONS)
QUICK = dict(n_baseline=1, n_condition=1, n_icc=3,
             conditions={"snr": [("15", dict(snr=15.0)), ("25", {})]})
SEED_BASE, SEED_ICC = 100, 200
ICC_CR_SD = 0.02  # + age slope 0.001/year over 20-70 years: SN CR sd ~0.025


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def default_nuclei() -> str:
    """The phantoms' nuclei when none is given: AAL3 (nuclei nmbids was not built from) when
    present, else the phantom's builtin ones."""
    return str(AAL3) if AAL3.exists() else "builtin"


def is_aal3(nuclei: str) -> bool:
    """Whether a cohort's nuclei are AAL3's (said in the validation pages)."""
    return nuclei != "builtin" and "AAL3" in nuclei


def aal3_missing(study: str) -> bool:
    """True, after saying so, when the AAL3 atlas is absent. The studies that need nuclei nmbids
    was not built from then exit 0, as on a checkout without ``../shared``."""
    if AAL3.exists():
        return False
    log(f"AAL3 not found at {AAL3}: {study} needs nuclei nmbids was not built from; skipped")
    return True


def cohorts(plan: dict, nuclei: str) -> dict:
    """name -> (simulate kwargs, description)."""
    common = dict(PHANTOM, **BASELINE, nuclei=nuclei)
    out = {"baseline": (dict(common, acq=("gremt", "fse", "mtr"), n_subjects=plan["n_baseline"],
                             seed=SEED_BASE), "baseline, GRE-MT + FSE + MT pair")}
    out["icc"] = (dict(common, acq=("gremt",), n_subjects=plan["n_icc"], seed=SEED_ICC, sessions=2,
                       cr_sd=ICC_CR_SD), "test-retest, 2 sessions, realistic spread")
    # conditions: the harder level of every factor first (the run has a time budget)
    conds = [(f, lvl, ch) for f, levels in plan["conditions"].items() for lvl, ch in levels if ch]
    order = ["snr-15", "max_tilt_deg-25", "slice_mm-3", "motion_mm-2"]
    conds.sort(key=lambda c: order.index(f"{c[0]}-{c[1]}") if f"{c[0]}-{c[1]}" in order else len(order))
    for factor, level, change in conds:
        out[f"{factor}-{level}"] = (dict(common, **change, acq=("gremt",), n_subjects=plan["n_condition"],
                                         seed=SEED_BASE), f"{factor} = {level}")
    return out


def run_cohort(name: str, kwargs: dict, root: Path, quality: str, nprocs: int) -> dict:
    from nmbids.phantom import simulate_dataset

    d = root / name
    info = {"name": name, "ok": True}
    t0 = time.time()
    if not (d / "truth.json").exists():
        kw = dict(kwargs)
        n, seed = kw.pop("n_subjects"), kw.pop("seed")
        simulate_dataset(d, n_subjects=n, seed=seed, overwrite=True, **kw)
    info["simulate_s"] = round(time.time() - t0, 1)
    t1 = time.time()
    rc = run_participant_level(d, nprocs, quality)
    info["ok"] = rc == 0
    if rc != 0:
        log(f"  nmbids exited {rc} on {name} (see {d / 'nmbids.log'})")
    info["nmbids_s"] = round(time.time() - t1, 1)
    return info


def analyse(root: Path, names: dict, results: Path, plan: dict) -> None:
    """Every table the document needs, into ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    all_pairs, lc, variants, misreg, oracle, bias = [], [], [], [], [], []
    for name in names:
        d = root / name
        truth = measure.load_truth(d)
        meas = measure.load_measures(d / "out")
        p = measure.pairs(truth, meas)
        p.insert(0, "cohort", name)
        all_pairs.append(p)
        if name not in ("baseline", "icc"):
            continue
        for sub, ses, a in measure.truth_acqs(truth):
            try:
                if a["acq_type"] in ("GREMT", "FSE"):
                    lc += [dict(cohort=name, **r) for r in measure.lc_localisation(d / "out", d, sub, ses, a)]
                    variants += [dict(cohort=name, **r) for r in
                                 measure.native_and_template(d / "out", sub, ses, a["acq_type"], meas)]
                if name == "icc" and a["acq_type"] == "GREMT":
                    oracle += [dict(cohort=name, **r) for r in measure.oracle_cr(d / "out", d, sub, ses, a, meas)]
                    bias += [dict(cohort=name, **r) for r in measure.bias_correction(d / "out", d, sub, ses, a, meas)]
                if name == "baseline" and a["acq_type"] in ("GREMT", "FSE"):
                    misreg += [dict(cohort=name, **r) for r in
                               measure.misregistration(d / "out", sub, ses, a["acq_type"], meas)]
            except (FileNotFoundError, ValueError, KeyError) as exc:
                log(f"  {name} {sub} {ses} {a['acq_type']}: skipped ({exc})")
        log(f"  analysed {name}")
    pairs = pd.concat(all_pairs, ignore_index=True)
    pairs.to_csv(results / "pairs.tsv", sep="\t", index=False)
    pd.DataFrame(lc).to_csv(results / "lc_localisation.tsv", sep="\t", index=False)
    pd.DataFrame(oracle).to_csv(results / "oracle.tsv", sep="\t", index=False)
    pd.DataFrame(bias).to_csv(results / "bias_field.tsv", sep="\t", index=False)
    truth_tabs = []
    for name in ("baseline", "icc"):
        t = measure.truth_table(measure.load_truth(root / name))
        t.insert(0, "cohort", name)
        truth_tabs.append(t)
    v = pd.DataFrame(variants).merge(pd.concat(truth_tabs), on=["cohort", "sub", "ses", "acq_type", "roi", "hemi"],
                                     how="left")
    v.to_csv(results / "variants.tsv", sep="\t", index=False)
    mr = pd.DataFrame(misreg)
    if len(mr):
        mr = mr.merge(pd.concat(truth_tabs), on=["cohort", "sub", "ses", "acq_type", "roi", "hemi"], how="left")
    mr.to_csv(results / "misregistration.tsv", sep="\t", index=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "validation-work",
                    help="scratch folder: phantoms, nmbids outputs and work dirs, results (default ./validation-work)")
    ap.add_argument("--docs", type=Path, default=REPO / "docs", help="where validation.md and validation/ go")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (minutes); numbers are not meaningful")
    ap.add_argument("--registration-quality", choices=("fast", "default"), default="fast")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--nuclei", default=None, help="nuclei label image (default: AAL3 when present, else builtin)")
    ap.add_argument("--budget-min", type=float, default=45.0,
                    help="start no new cohort after this many minutes (skipped cohorts are listed in the document)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the document from --out/results")
    args = ap.parse_args(argv)

    plan = QUICK if args.quick else FULL
    nuclei = args.nuclei or default_nuclei()
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    results = root / "results"
    names = cohorts(plan, nuclei)
    meta_path = results / "run.json"
    if not args.report_only:
        started = time.time()
        runs = []
        for name, (kwargs, _) in names.items():
            if (time.time() - started) / 60 > args.budget_min and not (root / name / "nmbids.rc").exists():
                log(f"cohort {name}: not run (time budget of {args.budget_min} min spent)")
                runs.append({"name": name, "ok": False, "skipped": True})
                continue
            log(f"cohort {name}: {kwargs['n_subjects']} subject(s)")
            info = run_cohort(name, kwargs, root, args.registration_quality, args.nprocs)
            log(f"  simulate {info['simulate_s']} s, nmbids {info['nmbids_s']} s, ok={info['ok']}")
            runs.append(info)
        log("analysing")
        ran = [r["name"] for r in runs if not r.get("skipped")]
        analyse(root, ran, results, plan)
        meta = {
            **stamp(started),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} (shared with other jobs)",
            "quick": args.quick, "registration_quality": args.registration_quality, "nprocs": args.nprocs,
            "nuclei": nuclei, "nuclei_is_aal3": is_aal3(nuclei),
            "plan": {k: v for k, v in plan.items() if k != "conditions"},
            "conditions": {f: [lvl for lvl, _ in levels] for f, levels in plan["conditions"].items()},
            "phantom": {k: list(v) if isinstance(v, tuple) else v for k, v in PHANTOM.items()},
            "baseline": BASELINE, "icc_cr_sd": ICC_CR_SD,
            "cohorts": {n: {"description": desc, **{k: (list(v) if isinstance(v, tuple) else v)
                                                    for k, v in kw.items() if k != "nuclei"}}
                        for n, (kw, desc) in names.items()},
            "runs": runs,
            "defaults": report.current_defaults(),
        }
        (results / "run.json").write_text(json.dumps(meta, indent=1))
    meta = json.loads(meta_path.read_text())
    report.write(results, args.docs, meta)
    log(f"wrote {args.docs / 'validation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
