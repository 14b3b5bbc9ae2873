#!/usr/bin/env bash
# Train the packaged continuous-time model (`--ckpt embedded-continuous`, recipes/embedded_continuous.toml)
# with the reference trainer, then package it (EMA weights only, scripts/package_model.py). Training is
# resumable: run this again (or stop it with Ctrl-C at any time) and it goes on from the last checkpoint,
# exactly (tests/test_train_continuous.py). On a 2-core CPU it ran in the background on one thread: see
# ddpm_bench/models/embedded/README.md for the time and the log.
# Run from the repository root, with PYTHON set to the interpreter that has ddpm-bench (default python3).
set -euo pipefail
run=${1:-runs/embedded-continuous-train}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "${PYTHON:-python3}" -m ddpm_bench train --recipe recipes/embedded_continuous.toml \
    --out "$run" --no-progress
last=$(ls "$run"/checkpoints/ckpt_*.pt | sort | tail -n 1)
"${PYTHON:-python3}" scripts/package_model.py "$last" --name embedded-continuous --weights ema
cp "$run"/log.csv ddpm_bench/models/embedded/continuous_train_log.csv
