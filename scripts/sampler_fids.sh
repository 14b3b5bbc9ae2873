#!/usr/bin/env bash
# Sample FIDs of issue 14: ancestral sampling against DDIM (eta 0) on the same respaced timesteps, at a few
# step counts K, for one model (default: the packaged one), each against embedded:test (500 images) with
# the packaged FID Inception. N samples per row (default 500: fewer than the 2,048 feature dimensions, so
# explicitly allowed and "not comparable" to the paper; the rows compare to each other, same seeds).
# Run from the repository root; PYTHON is the interpreter with ddpm-bench (default python3); OUT the
# working folder (default runs/sampler_fids); CKPT, N and STEPS ("10 25 50 100") may be set. Resumable.
set -euo pipefail
out=${OUT:-runs/sampler_fids}
py=${PYTHON:-python3}
ckpt=${CKPT:-embedded}
n=${N:-500}
echo "| K | ancestral FID | DDIM (eta 0) FID |"
echo "|---:|---:|---:|"
for k in ${STEPS:-10 25 50 100}; do
    row="| $k |"
    for sampler in ancestral ddim; do
        run="$out/${sampler}_$k"
        "$py" -m ddpm_bench sample --ckpt "$ckpt" --num "$n" --steps "$k" --sampler "$sampler" --seed 0 \
            --no-progress --out "$run/samples" >/dev/null
        "$py" -m ddpm_bench fid --samples "$run/samples" --ref embedded:test --feature-extractor packaged \
            --allow-few-samples --no-prc --no-progress --out "$run/fid" >/dev/null
        row+=$("$py" -c 'import json, sys
print(" %.2f |" % json.load(open(sys.argv[1]))["fid"], end="")' "$run/fid/metrics.json")
    done
    echo "$row"
done
