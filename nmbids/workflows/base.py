"""The nipype graph of one participant: ``init_participant_wf`` and the workflows it joins.

Per session, ``init_anat_wf``: T1w bias correction, T1w -> template registration, the T1w
resampled into the template, and the sink of the session's T1w derivatives. Per NM image,
``init_nm_wf``: prepare (repeats realigned and averaged, N4) -> coregister to the T1w ->
measure, and the sink of the image's derivatives and result. The NM workflow needs only the
bias-corrected T1w to coregister, so it runs while the template registration is still going.

Node names are unique in the whole graph (session tag and image index): nipype names crash
files after them, and the orchestrator finds the crash file of a failed step by its name.
"""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..acquisitions import PROFILES
from ..interfaces.processing import (AnatToTemplate, BiasCorrectT1w, CoregNM, PrepareNM, QuantifyNM,
                                     WarpT1wToTemplate)
from ..interfaces.sinks import AnatSink, NMSink

ANAT_STEPS = ("t1w", "anat", "t1w_template", "ds_anat")
NM_STEPS = ("prepare", "coreg", "quantify", "ds_nm")


def _tag(session: str | None) -> str:
    return f"ses_{session}" if session else "nosession"


def node_names(session: str | None, index: int | None = None) -> dict:
    """The graph's node names of a session's T1w steps (``index`` None) or of its NM image."""
    tag = _tag(session)
    if index is None:
        return {"t1w": f"t1w_{tag}", "anat": f"anat_{tag}", "t1w_template": f"t1wtpl_{tag}",
                "ds_anat": f"ds_anat_{tag}"}
    return {step: f"{step}_{tag}_{index}" for step in NM_STEPS}


def workflow_name(participant: str) -> str:
    return f"sub_{participant}_wf"


def participant_work_dir(work_dir: Path, participant: str) -> Path:
    """The participant's folder in the work directory (``--clean-workdir`` removes it)."""
    return Path(work_dir) / workflow_name(participant)


def result_file(work_dir: Path, participant: str, session: str | None, index: int | None = None) -> Path:
    """Where a sink records what it wrote: the session's T1w sink (``index`` None) or an NM's."""
    name = f"{_tag(session)}_anat.json" if index is None else f"{_tag(session)}_nm{index}.json"
    return participant_work_dir(work_dir, participant) / "results" / name


# What each step asks of MultiProc: its threads and an estimate of its peak memory in GB, so
# that --nprocs and --mem are honoured. The T1w N4 and the T1w -> template registration use
# --omp-nthreads ITK threads (166 % and 213 % CPU with 2 threads in nipype's resource monitor);
# the NM preparation and the measures run at about one CPU (105 %, 113 %), and so does the
# NM -> T1w rigid registration of a slab (4.3 s CPU in 4.5 s with 2 threads). Memory: 0.45-0.75
# GB per step for a 1.5 mm T1w; a whole 1 mm participant peaked at 1.7-1.9 GB (docs/performance.md).
# The sinks only copy files.
THREADED_STEPS = {"t1w", "anat"}
STEP_MEM_GB = {"t1w": 1.0, "anat": 1.5, "t1w_template": 0.5, "ds_anat": 0.1,
               "prepare": 0.75, "coreg": 0.75, "quantify": 1.0, "ds_nm": 0.2}


SINK_STEPS = {"ds_anat", "ds_nm"}


def _node(interface, name: str, step: str, omp_nthreads: int) -> pe.Node:
    # sinks only copy files: they run in the scheduler's process, never as a batch job of
    # their own (as niworkflows' DerivativesDataSink)
    return pe.Node(interface, name=name, n_procs=omp_nthreads if step in THREADED_STEPS else 1,
                   mem_gb=STEP_MEM_GB[step], run_without_submitting=step in SINK_STEPS)


def init_anat_wf(plan, *, output_dir: Path, work_dir: Path, template: str, t1w_source: str,
                 quality: str = "default", omp_nthreads: int = 1, seed: dict | None = None) -> pe.Workflow:
    """A session's T1w: bias correction, registration to the template, its derivatives.

    outputnode: ``t1w_preproc`` (for the NM coregistration), ``affine``, ``warp``,
    ``invwarp`` (T1w <-> template) and ``similarity`` (the registration's QC)."""
    names = node_names(plan.session)
    wf = pe.Workflow(name=f"anat_{_tag(plan.session)}_wf")
    outputnode = pe.Node(IdentityInterface(fields=["t1w_preproc", "affine", "warp", "invwarp", "similarity"]),
                         name="outputnode")
    t1w = _node(BiasCorrectT1w(t1w=plan.t1w), names["t1w"], "t1w", omp_nthreads)
    anat = _node(AnatToTemplate(template=template, quality=quality, **(seed or {})), names["anat"], "anat",
                 omp_nthreads)
    warped = _node(WarpT1wToTemplate(template=template), names["t1w_template"], "t1w_template", omp_nthreads)
    sink = _node(AnatSink(output_dir=str(output_dir), participant=plan.participant, session=plan.session,
                          space=template, t1w_source=t1w_source,
                          result_file=str(result_file(work_dir, plan.participant, plan.session))),
                 names["ds_anat"], "ds_anat", omp_nthreads)
    wf.connect([
        (t1w, anat, [("t1w_preproc", "t1w")]),
        (t1w, warped, [("t1w_preproc", "t1w")]),
        (anat, warped, [("affine", "affine"), ("warp", "warp")]),
        (t1w, sink, [("t1w_preproc", "t1w_preproc")]),
        (warped, sink, [("t1w_template", "t1w_template")]),
        (anat, sink, [("affine", "affine"), ("warp", "warp"), ("invwarp", "invwarp")]),
        (t1w, outputnode, [("t1w_preproc", "t1w_preproc")]),
        (anat, outputnode, [("affine", "affine"), ("warp", "warp"), ("invwarp", "invwarp"),
                            ("similarity", "similarity")]),
    ])
    return wf


def init_nm_wf(plan, index: int, nm, *, output_dir: Path, work_dir: Path, template: str, atlas: Path,
               atlas_table: Path, ref_stat: str, sources: list[str], omp_nthreads: int = 1,
               seed: dict | None = None) -> pe.Workflow:
    """One NM image: prepare, coregister, measure, write.

    inputnode: the session's ``t1w_preproc``, ``affine``, ``warp``, ``invwarp`` and
    ``template_similarity``. The result is the sink's record (``result_file``)."""
    names = node_names(plan.session, index)
    seed = seed or {}
    wf = pe.Workflow(name=f"nm_{_tag(plan.session)}_{index}_wf")
    inputnode = pe.Node(IdentityInterface(fields=["t1w_preproc", "affine", "warp", "invwarp",
                                                  "template_similarity"]), name="inputnode")
    prep = _node(PrepareNM(in_files=nm.files, **seed), names["prepare"], "prepare", omp_nthreads)
    if nm.mt_off:
        prep.inputs.mt_off = nm.mt_off
    coreg = _node(CoregNM(**seed), names["coreg"], "coreg", omp_nthreads)
    quant = _node(QuantifyNM(atlas=str(atlas), atlas_table=str(atlas_table), template=template,
                             acq_type=nm.acq_type, ref_stat=ref_stat, profile=repr(PROFILES[nm.acq_type])),
                  names["quantify"], "quantify", omp_nthreads)
    sink = _node(NMSink(output_dir=str(output_dir), participant=plan.participant, session=plan.session,
                        space=template, atlas_table=str(atlas_table), ref_stat=ref_stat,
                        nm={"source": nm.source, "prefix": nm.prefix, "acq_type": nm.acq_type,
                            "evidence": list(nm.evidence), "sources": list(sources)},
                        result_file=str(result_file(work_dir, plan.participant, plan.session, index))),
                 names["ds_nm"], "ds_nm", omp_nthreads)
    wf.connect([
        (prep, coreg, [("nm_preproc", "nm")]),
        (inputnode, coreg, [("t1w_preproc", "t1w")]),
        (prep, quant, [("nm_preproc", "nm")]),
        (coreg, quant, [("rigid", "rigid")]),
        (inputnode, quant, [("affine", "affine"), ("warp", "warp"), ("invwarp", "invwarp")]),
        (prep, sink, [("nm_preproc", "nm_preproc"), ("motion", "motion")]),
        (coreg, sink, [("nm_t1w", "nm_t1w"), ("rigid", "rigid"), ("similarity", "similarity")]),
        (inputnode, sink, [("template_similarity", "template_similarity")]),
        (quant, sink, [("nm_template", "nm_template"), ("dseg", "dseg"), ("crmap", "crmap"),
                       ("results", "results")]),
    ])
    if nm.mt_off:
        wf.connect([(prep, quant, [("mt_off_preproc", "mt_off")]),
                    (quant, sink, [("mtr_native", "mtr_native"), ("mtr_template", "mtr_template"),
                                   ("mte_native", "mte_native"), ("mte_template", "mte_template")])])
    return wf


def init_participant_wf(participant: str, plans, *, output_dir: Path, work_dir: Path, bids_dir: Path,
                        template: str, atlas: Path, atlas_table: Path, ref_stat: str = "mode",
                        quality: str = "default", omp_nthreads: int = 1,
                        random_seed: int | None = None) -> pe.Workflow:
    """The workflow of the sessions in ``plans`` that have a T1w and NM inputs."""
    from ..outputs import bids_uri
    from ..qc import rel

    wf = pe.Workflow(name=workflow_name(participant), base_dir=str(work_dir))
    seed = {} if random_seed is None else {"random_seed": random_seed}  # unset: the default seed
    for plan in plans:
        if not plan.t1w or not plan.nm:
            continue
        anat_wf = init_anat_wf(plan, output_dir=output_dir, work_dir=work_dir, template=template,
                               t1w_source=rel(plan.t1w, bids_dir), quality=quality,
                               omp_nthreads=omp_nthreads, seed=seed)
        for index, nm in enumerate(plan.nm):
            sources = [bids_uri(nm.source)] + ([bids_uri(rel(nm.mt_off, bids_dir))] if nm.mt_off else [])
            nm_wf = init_nm_wf(plan, index, nm, output_dir=output_dir, work_dir=work_dir, template=template,
                               atlas=atlas, atlas_table=atlas_table, ref_stat=ref_stat, sources=sources,
                               omp_nthreads=omp_nthreads, seed=seed)
            wf.connect(anat_wf, "outputnode.t1w_preproc", nm_wf, "inputnode.t1w_preproc")
            wf.connect(anat_wf, "outputnode.affine", nm_wf, "inputnode.affine")
            wf.connect(anat_wf, "outputnode.warp", nm_wf, "inputnode.warp")
            wf.connect(anat_wf, "outputnode.invwarp", nm_wf, "inputnode.invwarp")
            wf.connect(anat_wf, "outputnode.similarity", nm_wf, "inputnode.template_similarity")
    return wf
