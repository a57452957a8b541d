"""``--dry-run``: what the participant level would process, from discovery alone.

Nothing is read but the folder listings and the sidecars (no image is opened) and nothing is
written but the log.
"""
from __future__ import annotations

from pathlib import Path


def _rel(path, bids_dir: Path) -> str:
    try:
        return Path(path).relative_to(bids_dir).as_posix()
    except ValueError:
        return str(path)


def describe(plans: dict, bids_dir: Path) -> list[str]:
    """Lines: per participant and session the T1w, each NM image (type, evidence, repeats)
    and every skipped file with its reason."""
    lines = []
    for participant, session_plans in plans.items():
        for plan in session_plans:
            head = f"sub-{participant}" + (f" ses-{plan.session}" if plan.session else "")
            t1w = _rel(plan.t1w, bids_dir) if plan.t1w else "none"
            lines.append(f"{head}: T1w {t1w}" + (f" ({plan.t1w_note})" if plan.t1w_note else ""))
            for nm in plan.nm:
                files = ", ".join(_rel(f, bids_dir) for f in nm.files)
                repeats = (f"{len(nm.files)} runs realigned and averaged as repeats: {files}" if len(nm.files) > 1
                           else "1 file (the volumes of a 4D file are the repeats)")
                lines.append(f"  NM {nm.source}: {nm.acq_type} ({'; '.join(nm.evidence) or 'no evidence'}); "
                             f"{repeats}"
                             + (f"; mt-off {_rel(nm.mt_off, bids_dir)}" if nm.mt_off else ""))
            if not plan.nm:
                lines.append("  no NM image: nothing to process in this session")
            for item in plan.ignored:
                flag = {"error": " [error]", "warning": " [warning]"}.get(item.get("problem"), "")
                lines.append(f"  skipped {item['path']}: {item['reason']}{flag}")
    n_part = len(plans)
    n_nm = sum(len(p.nm) for pl in plans.values() for p in pl)
    n_skip = sum(len(p.ignored) for pl in plans.values() for p in pl)
    lines.append(f"dry run: {n_part} participant(s), {n_nm} NM image(s) to process, {n_skip} file(s) skipped; "
                 "nothing was processed or written")
    return lines
