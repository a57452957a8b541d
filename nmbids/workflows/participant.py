"""``init_participant_wf``: the nipype graph of one participant.

One flat workflow per participant: per session, a T1w bias-correction node and one T1w →
template node shared by every NM acquisition of the session, and a node that resamples the
T1w into the template (a derivative only); per NM acquisition, prepare → coregister →
quantify. Coregistration needs only the bias-corrected T1w, so it runs while the template
registration is still going; the resampled T1w is made while the NM is measured. Nodes are
named so that their folders in the work directory are predictable (``node_dir``): the
orchestrator reads results from there, whether or not other nodes failed.
"""
from __future__ import annotations

from pathlib import Path

from nipype.pipeline import engine as pe

from ..acquisitions import PROFILES
from ..interfaces.processing import (AnatToTemplate, BiasCorrectT1w, CoregNM, PrepareNM, QuantifyNM,
                                     WarpT1wToTemplate)


def _tag(session: str | None) -> str:
    return f"ses_{session}" if session else "nosession"


def node_names(session: str | None, index: int | None = None) -> dict:
    tag = _tag(session)
    if index is None:
        return {"anat": f"anat_{tag}", "t1w": f"t1w_{tag}", "t1w_template": f"t1wtpl_{tag}"}
    return {step: f"{step}_{tag}_{index}" for step in ("prepare", "coreg", "quantify")}


def workflow_name(participant: str) -> str:
    return f"sub_{participant}_wf"


def node_dir(work_dir: Path, participant: str, node: str) -> Path:
    return Path(work_dir) / workflow_name(participant) / node


# What each step asks of MultiProc: its threads and an estimate of its peak memory in GB, so
# that --nprocs and --mem are honoured. The T1w N4 and the T1w -> template registration use
# --omp-nthreads ITK threads (166 % and 213 % CPU with 2 threads in nipype's resource monitor);
# the NM preparation and the measures run at about one CPU (105 %, 113 %), and so does the
# NM -> T1w rigid registration of a slab (4.3 s CPU in 4.5 s with 2 threads). Memory: 0.45-0.75
# GB per step for a 1.5 mm T1w; a whole 1 mm participant peaked at 1.7-1.9 GB (docs/performance.md).
THREADED_STEPS = {"t1w", "anat"}
STEP_MEM_GB = {"t1w": 1.0, "anat": 1.5, "t1w_template": 0.5, "prepare": 0.75, "coreg": 0.75, "quantify": 1.0}


def _node(interface, name: str, step: str, omp_nthreads: int) -> pe.Node:
    return pe.Node(interface, name=name, n_procs=omp_nthreads if step in THREADED_STEPS else 1,
                   mem_gb=STEP_MEM_GB[step])


def init_participant_wf(participant: str, plans, *, work_dir: Path, template: str, atlas: Path,
                        atlas_table: Path, ref_stat: str = "mode", quality: str = "default",
                        omp_nthreads: int = 1, random_seed: int | None = None):
    """Build the workflow for the sessions in ``plans`` that have a T1w and NM inputs."""
    wf = pe.Workflow(name=workflow_name(participant), base_dir=str(work_dir))
    seed = {} if random_seed is None else {"random_seed": random_seed}  # unset: the default seed
    for plan in plans:
        if not plan.t1w or not plan.nm:
            continue
        names = node_names(plan.session)
        t1w = _node(BiasCorrectT1w(t1w=plan.t1w), names["t1w"], "t1w", omp_nthreads)
        anat = _node(AnatToTemplate(template=template, quality=quality, **seed), names["anat"], "anat",
                     omp_nthreads)
        warped = _node(WarpT1wToTemplate(template=template), names["t1w_template"], "t1w_template", omp_nthreads)
        wf.connect([(t1w, anat, [("t1w_preproc", "t1w")]),
                    (t1w, warped, [("t1w_preproc", "t1w")]),
                    (anat, warped, [("affine", "affine"), ("warp", "warp")])])
        for index, nm in enumerate(plan.nm):
            names = node_names(plan.session, index)
            prep = _node(PrepareNM(in_files=nm.files, **seed), names["prepare"], "prepare", omp_nthreads)
            if nm.mt_off:
                prep.inputs.mt_off = nm.mt_off
            coreg = _node(CoregNM(**seed), names["coreg"], "coreg", omp_nthreads)
            quant = _node(QuantifyNM(atlas=str(atlas), atlas_table=str(atlas_table), template=template,
                                     acq_type=nm.acq_type, ref_stat=ref_stat,
                                     profile=repr(PROFILES[nm.acq_type])), names["quantify"], "quantify",
                          omp_nthreads)
            wf.connect([
                (prep, coreg, [("nm_preproc", "nm")]),
                (t1w, coreg, [("t1w_preproc", "t1w")]),
                (prep, quant, [("nm_preproc", "nm")]),
                (coreg, quant, [("rigid", "rigid")]),
                (anat, quant, [("affine", "affine"), ("warp", "warp"), ("invwarp", "invwarp")]),
            ])
            if nm.mt_off:
                wf.connect(prep, "mt_off_preproc", quant, "mt_off")
    return wf
