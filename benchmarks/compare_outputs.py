"""Compare the tables of two nmbids output folders: the check that a change of design left
the numbers alone.

Every measures, QC and group table (``*_measures.tsv``, ``*_qc.tsv``, ``group/*.tsv``) of the
first folder must exist in the second with the same bytes. Prints one line per table that
differs or is missing, and a summary; exit 1 when anything differs.

    python benchmarks/compare_outputs.py BEFORE/derivatives AFTER/derivatives [--except-acq MTR]

``--except-acq TYPE`` (repeatable) leaves the rows of that acquisition type (the ``acq_type``
column) out of the measures tables before comparing them: the check that a change to one
acquisition type's measures left the others' alone, row for row.

Made for the phantom demo run twice (``make demo DEMO=...`` at each commit): the same seed
gives the same images, so any difference is the pipeline's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PATTERNS = ("sub-*/**/*_measures.tsv", "sub-*/**/*_qc.tsv", "group/*.tsv")


def tables(root: Path, except_acq=()) -> dict[str, bytes]:
    return {str(p.relative_to(root)): _without(p.read_bytes(), except_acq) if p.name.endswith("_measures.tsv")
            else p.read_bytes() for pattern in PATTERNS for p in sorted(root.glob(pattern))}


def _without(data: bytes, except_acq) -> bytes:
    """A measures table's bytes without the rows whose ``acq_type`` is in ``except_acq``."""
    if not except_acq:
        return data
    lines = data.decode().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split("\t")
    if "acq_type" not in header:
        return data
    col = header.index("acq_type")
    keep = [ln for ln in lines[1:] if ln.rstrip("\n").split("\t")[col] not in except_acq]
    return "".join(lines[:1] + keep).encode()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--except-acq", action="append", default=[], metavar="TYPE",
                    help="leave the measures rows of this acquisition type out (repeatable)")
    args = ap.parse_args(argv)
    before, after = tables(args.before, args.except_acq), tables(args.after, args.except_acq)
    if not before:
        print(f"no tables in {args.before}", file=sys.stderr)
        return 1
    differ = 0
    for name, data in before.items():
        if name not in after:
            print(f"missing in {args.after}: {name}")
            differ += 1
        elif after[name] != data:
            print(f"differs: {name}")
            differ += 1
    extra = sorted(set(after) - set(before))
    for name in extra:
        print(f"new in {args.after}: {name}")
    print(f"{len(before)} tables compared: {len(before) - differ} identical, {differ} different or missing"
          f"{f', {len(extra)} new' if extra else ''}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
