"""Participant QC reports (fMRIPrep/MRIQC style): HTML pages that render the derivatives
already on disk. See docs/reports.md.

``generate_participant_report`` and ``write_citation`` are the pipeline's entry points;
``THRESHOLDS`` (in :mod:`nmbids.contract.thresholds`) the documented QC warning thresholds.
Matplotlib and nilearn are imported only when figures are drawn.
"""
from .participant import generate_participant_report, write_citation

__all__ = ["generate_participant_report", "write_citation"]
