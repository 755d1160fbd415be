#!/usr/bin/env bash
# Installs pagefault-inspector into .venv and runs it. With no arguments it investigates this machine
# for 10 seconds and prints the report; `./run.sh serve` starts the webhook receiver with its defaults;
# `./run.sh demo` shows a finding on a workload of its own (app/demo.py).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
if [ $# -eq 0 ]; then set -- investigate --seconds 10; fi
exec .venv/bin/pagefault-inspector "$@"
