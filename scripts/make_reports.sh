#!/usr/bin/env bash
# Regenerate reports/: the README's main job (the packaged model, `--ckpt embedded`, evaluated with
# recipes/embedded.toml on the embedded data set), then copy its report (Tables 1-4, Figure 5, where the
# bits go, the samples) into reports/. Run from the repository root, with PYTHON set to the
# interpreter that has ddpm-bench installed (default python3).
set -euo pipefail
run=${1:-runs/embedded}
"${PYTHON:-python3}" -m ddpm_bench reproduce recipes/embedded.toml --ckpt embedded --out "$run" --no-progress
rm -rf reports && mkdir -p reports
cp "$run"/report/* reports/
rm -f reports/run.json
echo "reports/ regenerated from $run"
