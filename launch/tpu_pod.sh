#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create the slice, copy this repository to every worker,
# install it, and run the same command on all workers at once (one process per host).
#
#   launch/tpu_pod.sh create                     # gcloud compute tpus tpu-vm create
#   launch/tpu_pod.sh copy                       # scp the repository to every worker, pip install
#   launch/tpu_pod.sh run -- --config=configs/ring.py:imagenet2012 \
#       --workdir=gs://BUCKET/mi_ring_in1k --config.data_dir=gs://BUCKET/tfds
#   launch/tpu_pod.sh ssh -- 'tail -n 20 ~/mi_contrast.log'   # any command on all workers
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME (default mi-contrast), ZONE (us-central2-b),
# ACCELERATOR_TYPE (v4-32), RUNTIME_VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default),
# REMOTE_DIR (~/mi_contrast on each worker), EXTRA_CREATE_FLAGS (e.g. --spot).
#
# `run` passes --distributed=on: jax.distributed.initialize() then finds the workers from the
# TPU VM metadata. The workdir must be a path every worker can write (a gs:// bucket or a
# shared disk): orbax writes checkpoints from all processes together; process 0 writes the
# metrics, results and report. The run is started with nohup; its output goes to
# ~/mi_contrast.log on each worker, and `run` waits for all workers and fails if any fails.
set -euo pipefail

TPU_NAME="${TPU_NAME:-mi-contrast}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-~/mi_contrast}"
project_flag=()
[[ -n "${PROJECT:-}" ]] && project_flag=(--project="$PROJECT")
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,22p' "$0"; }

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
      --worker=all --command="$1"
}

action="${1:-}"
[[ $# -gt 0 ]] && shift
[[ "${1:-}" == "--" ]] && shift
case "$action" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
        --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
        ${EXTRA_CREATE_FLAGS:-}
    ;;
  copy)
    archive="$(mktemp -d)/mi_contrast.tar.gz"
    git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":/tmp/mi_contrast.tar.gz \
        --zone="$ZONE" "${project_flag[@]}" --worker=all
    on_all_workers "mkdir -p $REMOTE_DIR && tar -xzf /tmp/mi_contrast.tar.gz -C $REMOTE_DIR \
        && cd $REMOTE_DIR && pip install -q 'jax[tpu]' && pip install -q -e '.[tf]'"
    ;;
  run)
    [[ $# -gt 0 ]] || { echo "tpu_pod.sh run: give main's arguments after --" >&2; exit 2; }
    args="$(printf ' %q' "$@")"
    # Foreground on every worker (gcloud waits for all and returns non-zero if one fails);
    # the output is also kept in ~/mi_contrast.log on each worker.
    on_all_workers "cd $REMOTE_DIR && python3 -m mi_contrast.main --distributed=on$args \
        2>&1 | tee ~/mi_contrast.log; exit \${PIPESTATUS[0]}"
    ;;
  ssh)
    on_all_workers "$*"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --quiet
    ;;
  *)
    usage
    exit 2
    ;;
esac
