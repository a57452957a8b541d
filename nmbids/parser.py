"""The command line, with fMRIPrep/MRIQC names and spellings."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import __version__
from .acquisitions import DEFAULT_REF_STAT, REF_STATS


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 64 (EX_USAGE), not argparse's 2
        self.print_usage()
        self.exit(64, f"nmbids: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nmbids",
        description="nmbids: neuromelanin-sensitive MRI (GRE-MT, FSE/TSE, MT ratio) as a BIDS App. "
                    "Participant level: contrast ratio, CNR, volume and MTR in SN, VTA and LC, "
                    "voxelwise maps in template space and an HTML report. Group level: summary "
                    "tables, statistics with covariates, harmonisation, voxelwise tests.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="the root of the BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where derivatives are written")
    p.add_argument("analysis_level", help="'participant' or 'group'")
    p.add_argument("--version", action="version", version=f"nmbids {__version__}")

    g = p.add_argument_group("Selecting data")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="participants to process, with or without 'sub-' (default: all)")
    g.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                   help="sessions to process, with or without 'ses-' (default: all)")
    g.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, metavar="FILE",
                   help="JSON with pybids queries per input kind, e.g. "
                        '{"t1w": {"acquisition": null}, "nm": {"acquisition": "NM", "acq_type": "GREMT"}}; '
                        "'acq_type' (GREMT, FSE, MTR) overrides the classification")
    g.add_argument("--bids-database-dir", type=Path, metavar="DIR",
                   help="accepted for compatibility and ignored: nmbids walks the anat folders directly "
                        "and keeps no index database")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   help="do not run the BIDS validator on the input dataset")

    g = p.add_argument_group("Processing")
    g.add_argument("--template", default=None,
                   help="template space (default: MNI152NLin2009cAsym when cached by TemplateFlow, "
                        "else the MNI152NLin2009aSym that ships with nilearn)")
    g.add_argument("--atlas", type=Path, metavar="DSEG",
                   help="a user ROI label image in the template space, with a TSV beside it "
                        "(same name, .tsv) with columns index, name, roi, hemi, kind")
    g.add_argument("--ref-stat", choices=REF_STATS, default=DEFAULT_REF_STAT,
                   help=f"statistic of the reference region for contrast ratios (default: {DEFAULT_REF_STAT})")
    g.add_argument("--registration-quality", choices=("default", "fast"), default="default",
                   help="'fast' registers at lower resolution (tests and quick looks)")
    g.add_argument("--reports-only", action="store_true",
                   help="only rebuild the HTML reports from existing outputs")

    g = p.add_argument_group("Performance")
    g.add_argument("--nprocs", "--nthreads", "--n_cpus", "--n-cpus", type=int, default=None, metavar="N",
                   help="processes to run in parallel (default: all CPUs)")
    g.add_argument("--omp-nthreads", type=int, default=None, metavar="N",
                   help="threads per process for ANTs (default: nprocs, at most 8)")
    g.add_argument("--mem", "--mem-gb", "--mem_gb", type=float, default=None, metavar="GB",
                   help="memory limit for scheduling, in GB")
    g.add_argument("-w", "--work-dir", type=Path, default=None, metavar="DIR",
                   help="work directory; re-running with the same one resumes (default: ./work)")
    g.add_argument("--use-plugin", type=Path, metavar="YAML",
                   help="nipype plugin settings (plugin: and plugin_args:), e.g. for SLURM")
    g.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failure")
    g.add_argument("--notrack", action="store_true", help="accepted for compatibility: nmbids never phones home")

    g = p.add_argument_group("Group level")
    g.add_argument("--group-column", default=None,
                   help="participants.tsv column with the groups (default: 'group' when present)")
    g.add_argument("--covariates", nargs="+", default=[], metavar="COL", help="e.g. age sex")
    g.add_argument("--reference-group", default=None, help="the group other groups are compared to")
    g.add_argument("--predictor", default=None, metavar="COL",
                   help="a continuous participants.tsv column to test instead of groups")
    g.add_argument("--robust", action="store_true", help="heteroskedasticity-robust (HC3) standard errors")
    g.add_argument("--harmonize", default=None, metavar="COL",
                   help="harmonise across this participants.tsv column (site, scanner) with ComBat")
    g.add_argument("--n-permutations", type=int, default=1000, help="permutations of the voxelwise test")
    g.add_argument("--no-voxelwise", action="store_true", help="skip the voxelwise group test")
    g.add_argument("--seed", type=int, default=0, help="random seed of the permutation test")

    p.add_argument("-v", "--verbose", action="count", default=0, help="more output (-vv for debug)")
    return p
