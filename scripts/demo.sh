#!/usr/bin/env bash
# The whole chain on the built-in demo dataset: set-up, prepare, train (DTM), evaluate, submit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/abaw ] || { python3 -m venv .venv && .venv/bin/pip install --quiet -e .; }
export ABAW_WORK="${ABAW_WORK:-abaw-work}"
.venv/bin/abaw prepare
.venv/bin/abaw train --ssl dtm
.venv/bin/abaw evaluate --split val
.venv/bin/abaw submit
