#!/usr/bin/env bash
# Set up (idempotent: reuses .venv) and run mathvlm on this machine, all local devices:
#   bash launch/local.sh --config configs/demo.py --workdir runs/demo    (configs/text_demo.py: text only, ~1 min)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
exec .venv/bin/python -m mathvlm.main "$@"
