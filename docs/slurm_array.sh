#!/bin/bash
# nmbids on a SLURM cluster: one participant per array task, in Singularity/Apptainer
# (the default) or with an nmbids installed on the nodes (NMBIDS_CMD, below).
#
#   1. Build the image once:   singularity build nmbids-0.1.0.sif docker://nmbids/nmbids:0.1.0
#   2. Edit the paths below (or export BIDS_DIR, OUT_DIR, WORK_ROOT, SIF before sbatch: the
#      job inherits them), then submit one task per row of participants.tsv:
#        n=$(( $(wc -l < /path/to/bids/participants.tsv) - 1 ))
#        sbatch --array=1-${n}%50 docs/slurm_array.sh
#   3. When every task has finished, run the group level once (a single task is enough):
#        singularity run --cleanenv -B "$BIDS_DIR:/data:ro" -B "$OUT_DIR:/out" \
#            "$SIF" /data /out group
#
# Failed tasks can simply be resubmitted (sbatch --array=<ids>): each task keeps its own work
# directory under $WORK_ROOT, and nmbids resumes from nipype's cache there. Participants run in
# parallel into the same output directory: nmbids writes every output atomically.
#
# Without a container: NMBIDS_CMD=/path/to/venv/bin/nmbids sbatch ... runs that command on the
# host paths instead of `singularity run` (extra options for every task: NMBIDS_EXTRA_ARGS,
# e.g. "--registration-quality fast"; both work in container mode too).
#
#SBATCH --job-name=nmbids
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --output=logs/nmbids_%A_%a.out
set -euo pipefail

# ---- edit these -------------------------------------------------------------------------
BIDS_DIR=${BIDS_DIR:-/path/to/bids}                 # the BIDS dataset (read-only is fine)
OUT_DIR=${OUT_DIR:-/path/to/derivatives/nmbids}     # shared by all tasks
WORK_ROOT=${WORK_ROOT:-/scratch/$USER/nmbids_work}  # node-local or scratch storage; kept for resuming
SIF=${SIF:-/path/to/nmbids-0.1.0.sif}               # unused when NMBIDS_CMD is set
NMBIDS_CMD=${NMBIDS_CMD:-}                          # empty: run the image with Singularity
# -----------------------------------------------------------------------------------------

# Row N (1-based, after the header) of participants.tsv; its first column is participant_id.
subject=$(awk -F'\t' -v row="$((SLURM_ARRAY_TASK_ID + 1))" 'NR == row { print $1 }' \
    "$BIDS_DIR/participants.tsv")
subject=${subject#sub-}
if [[ -z "$subject" ]]; then
    echo "no participant on row $SLURM_ARRAY_TASK_ID of participants.tsv" >&2
    exit 66
fi

mkdir -p "$OUT_DIR" "$WORK_ROOT/sub-$subject/tmp"
echo "sub-$subject on $(hostname), ${SLURM_CPUS_PER_TASK:-2} CPUs"

options=(participant --participant-label "$subject"
         --nprocs "${SLURM_CPUS_PER_TASK:-2}"
         --mem "$(( ${SLURM_MEM_PER_NODE:-8192} / 1024 ))"
         --skip-bids-validation)   # validate the dataset once beforehand, not in every task
read -r -a extra <<< "${NMBIDS_EXTRA_ARGS:-}"

if [[ -n "$NMBIDS_CMD" ]]; then
    # nmbids installed on the nodes: host paths, TMPDIR on scratch as in the container
    export TMPDIR="$WORK_ROOT/sub-$subject/tmp"
    exec "$NMBIDS_CMD" "$BIDS_DIR" "$OUT_DIR" "${options[@]}" -w "$WORK_ROOT/sub-$subject" "${extra[@]}"
fi

# --cleanenv: the host's PYTHONPATH and friends must not leak in; TMPDIR points inside the
# bound work directory so that ANTs' temporary files land on scratch rather than in /tmp.
exec singularity run --cleanenv \
    --env TMPDIR=/work/tmp \
    -B "$BIDS_DIR:/data:ro" \
    -B "$OUT_DIR:/out" \
    -B "$WORK_ROOT/sub-$subject:/work" \
    "$SIF" /data /out "${options[@]}" -w /work "${extra[@]}"
