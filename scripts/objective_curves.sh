#!/usr/bin/env bash
# The training curve of issue 14: the bound on embedded:test against training steps for L_simple (fixed-large
# variance, the DDPM paper's choice) and L_hybrid (learned-range variance, improved DDPM) on the tiny recipe's
# U-Net, everything else equal (same seed, data, batches, timesteps and noise). Each checkpoint's EMA model
# is evaluated with the importance-sampled bound (`nll --terms 10`, all 500 test images); the table goes to
# stdout as Markdown. Run from the repository root; PYTHON is the interpreter with ddpm-bench (default
# python3); OUT the working folder (default runs/objective_curves). Resumable: rerun after a stop.
set -euo pipefail
out=${OUT:-runs/objective_curves}
py=${PYTHON:-python3}
steps=${STEPS:-4000}
every=${EVERY:-500}
common=(--recipe recipes/tiny.toml --set training.steps="$steps" --set training.ckpt_every="$every"
        --set training.keep_last=100 --set training.log_every=100 --set training.ema_decay=0.999 --no-progress)
"$py" -m ddpm_bench train "${common[@]}" --out "$out/L_simple" >/dev/null
"$py" -m ddpm_bench train "${common[@]}" --set diffusion.var_type=learned-range \
    --set training.objective=L_hybrid --out "$out/L_hybrid" >/dev/null
echo "| step | L_simple, fixed-large: bits/dim (s.e.) | L_hybrid, learned-range: bits/dim (s.e.) |"
echo "|---:|---:|---:|"
for ((s = every; s <= steps; s += every)); do
    row="| $s |"
    for obj in L_simple L_hybrid; do
        ckpt=$(printf "%s/%s/checkpoints/ckpt_%07d.pt" "$out" "$obj" "$s")
        "$py" -m ddpm_bench nll --ckpt "$ckpt" --data embedded:test --num-images 500 --terms 10 --seed 0 \
            --no-progress --out "$out/nll_${obj}_$s" >/dev/null
        row+=$("$py" -c 'import json, sys
m = json.load(open(sys.argv[1]))
print(" %.3f (%.3f) |" % (m["total_bpd"], m["total_bpd_stderr"]), end="")' "$out/nll_${obj}_$s/summary.json")
    done
    echo "$row"
done
