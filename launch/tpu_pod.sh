#!/usr/bin/env bash
# TPU pod slice, the older spelling: a thin wrapper of launch/tpu_pod.py (which checks the config against
# the topology and builds the gcloud `ssh --worker=all` command; see its --help). Run from the repository
# root, since the config path is checked here and used as is on the workers:
#   launch/tpu_pod.sh TPU_NAME ZONE --topology v5p-128 --config configs/mavis/instruct.py:size=7b,hf=... \
#       --workdir /mnt/runs/x [--config.KEY=VALUE ...]
# DRY_RUN=1 prints the gcloud command instead of running it.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 TPU_NAME ZONE --topology TOPOLOGY --config CONFIG [--workdir DIR] [tpu_pod.py options]" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3
tpu="$1"; zone="$2"; shift 2
extra=()
if [ "${DRY_RUN:-0}" = 1 ]; then extra=(--dry-run); fi
exec "$python" "$root/launch/tpu_pod.py" --tpu-name "$tpu" --zone "$zone" ${extra[@]+"${extra[@]}"} "$@"
