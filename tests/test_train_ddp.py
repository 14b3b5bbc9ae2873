"""Two-process training with torchrun (gloo on CPU): runs, writes each checkpoint once from rank 0, and
gives the parameters of the one-process run with the same global batch (dropout off: each process
draws its own dropout masks)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import TINY

ROOT = Path(__file__).parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

# the trainer tests' tiny recipe, without dropout (each process would draw its own masks)
DDP_SETS = ["--set", "model.dropout=0.0", "--set", "training.steps=4", "--set", "training.log_every=1",
            "--set", "training.ckpt_every=2"]


def train_both(recipe: Path, tmp_path: Path, sets: list[str]) -> subprocess.CompletedProcess:
    """Train `recipe` with two gloo processes into tmp_path/ddp and with one into tmp_path/one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["train", "--recipe", str(recipe), *sets, "--no-progress", "--device", "cpu"]
    ddp = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "ddpm_bench", "--", *common,
                          "--out", str(tmp_path / "ddp")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one = subprocess.run([sys.executable, "-m", "ddpm_bench", *common, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    return ddp


@pytest.mark.slow
@pytest.mark.parametrize("group", [0, 1])
def test_two_gloo_processes_match_one_process(tmp_path, group):
    """Also with the gradient clipped per group of images (grad_clip_group = 1, a clip that bites): each
    process clips its own groups, and the average is over every group of the global batch."""
    data = tmp_path / "data.npz"
    np.savez(data, np.random.default_rng(1).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.format(data=data))
    clip = ["--set", f"training.grad_clip_group={group}", "--set", "training.grad_clip=0.05"] if group else []
    ddp = train_both(recipe, tmp_path, [*DDP_SETS, *clip])

    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["ckpt_0000002.pt",
                                                                                     "ckpt_0000004.pt"]
    assert ddp.stdout.count('"run_dir"') == 1  # only rank 0 reports (and writes)
    log = (tmp_path / "ddp" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4"]

    def load(run, step):
        return torch.load(tmp_path / run / "checkpoints" / f"ckpt_{step:07d}.pt", weights_only=True)

    def flat(state):
        return torch.cat([v.flatten() for v in state.values()])

    # Same data, timesteps and noise; only the order of float additions differs, which Adam's
    # normalisation amplifies for near-zero gradients (seen: max |difference| 1e-6 against steps of 4e-4).
    a, b, b_earlier = load("ddp", 4), load("one", 4), load("one", 2)
    for key in ("model", "ema"):
        moved = (flat(b[key]) - flat(b_earlier[key])).norm()
        assert (flat(a[key]) - flat(b[key])).norm() < 1e-3 * moved, key
    la = [float(r.split(",")[1]) for r in log[1:]]
    lb = [float(r.split(",")[1]) for r in (tmp_path / "one" / "log.csv").read_text().splitlines()[1:]]
    assert np.allclose(la, lb, rtol=1e-4)


@pytest.mark.slow
def test_two_processes_share_the_l_vlb_history_of_the_global_batch(tmp_path):
    """The importance-sampled L_vlb: each process adds every image's term of the global batch to the
    history (all-gathered in row order), so both draw the one-process run's timesteps."""
    data = tmp_path / "data.npz"
    np.savez(data, np.random.default_rng(1).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.format(data=data))
    sets = ["--set", "model.dropout=0.0", "--set", "diffusion.T=4", "--set", "diffusion.var_type=learned-range",
            "--set", "training.objective=L_vlb", "--set", "training.steps=16", "--set", "training.ckpt_every=16"]
    train_both(recipe, tmp_path, sets)
    a, b = (torch.load(tmp_path / run / "checkpoints" / "ckpt_0000016.pt", weights_only=True) for run in ("ddp", "one"))
    assert a["resampler"]["count"].tolist() == [10] * 4  # importance-sampled by the end
    torch.testing.assert_close(a["resampler"]["history"], b["resampler"]["history"], rtol=1e-4, atol=0)
    la, lb = ([float(r.split(",")[1]) for r in (tmp_path / run / "log.csv").read_text().splitlines()[1:]]
              for run in ("ddp", "one"))
    assert np.allclose(la, lb, rtol=1e-3)
