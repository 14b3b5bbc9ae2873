"""The reference trainer end to end on a tiny U-Net: checkpoints, exact resume, config checks,
divergence, and loading the checkpoint for evaluation."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_bench import load_model
from ddpm_bench.cli import main
from tests.stderr import without_schedule_warning

ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here at one thread (see conftest.one_thread)."""


TINY = """
[model]
image_size = 8
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = [4]
dropout = 0.1

[diffusion]
T = 20

[training]
data = "{data}"
steps = 6
batch_size = 4
warmup = 2
ema_decay = 0.9
log_every = 2
ckpt_every = 3
keep_last = 2
"""


@pytest.fixture
def recipe(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(data=data))
    return path


def tiny_checkpoint(tmp_path) -> Path:
    """A checkpoint of the tiny recipe after 2 steps (8x8x3 images, T = 20), for evaluation tests."""
    rng = np.random.default_rng(0)
    data = tmp_path / "ckpt_data.npz"
    np.savez(data, rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    recipe = tmp_path / "ckpt_tiny.toml"
    recipe.write_text(TINY.format(data=data))
    run = tmp_path / "ckpt_run"
    assert train(recipe, run, "training.steps=2", "training.ckpt_every=2") == 0
    return run / "checkpoints" / "ckpt_0000002.pt"


def train(recipe, out, *sets):
    argv = ["train", "--recipe", str(recipe), "--out", str(out), "--no-progress", "--device", "cpu"]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


def ckpt(path):
    return torch.load(path, weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            assert_same_state(a[k], b[k])
        else:
            assert a[k] == b[k], k


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(recipe, tmp_path, capsys):
    assert train(recipe, tmp_path / "straight") == 0
    assert train(recipe, tmp_path / "resumed", "training.steps=3") == 0
    assert train(recipe, tmp_path / "resumed") == 0  # steps back to 6: resumes from ckpt_0000003
    assert "resuming" in capsys.readouterr().err
    a = ckpt(tmp_path / "straight" / "checkpoints" / "ckpt_0000006.pt")
    b = ckpt(tmp_path / "resumed" / "checkpoints" / "ckpt_0000006.pt")
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema", "optimizer"):
        assert_same_state(a[key], b[key])
    assert not torch.equal(a["model"]["conv_out.weight"], a["ema"]["conv_out.weight"])  # it did train
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert log[0] == "step,loss,grad_norm,lr,steps_per_s"
    assert [r.split(",")[0] for r in log[1:]] == ["2", "3", "4", "6"]


def test_checkpoints_hold_the_contract_and_load_for_evaluation(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    capsys.readouterr()
    assert train(recipe, run) == 0
    # what train prints when it ends: the run, its step and its last checkpoint (one JSON object)
    assert __import__("json").loads(capsys.readouterr().out) == {
        "run_dir": str(run), "step": 6, "checkpoint": str(run / "checkpoints" / "ckpt_0000006.pt")}
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["ckpt_0000003.pt", "ckpt_0000006.pt"]  # keep_last = 2
    c = ckpt(run / "checkpoints" / "ckpt_0000006.pt")
    assert c["format"] == "ddpm-bench/1" and c["step"] == 6
    assert set(c) >= {"config", "model", "ema", "optimizer", "step"}
    assert c["config"] == __import__("json").loads((run / "config.json").read_text())
    src = load_model(run / "checkpoints" / "ckpt_0000006.pt", device="cpu")
    assert src.image_shape == (3, 8, 8) and src.diffusion.T == 20 and src.model.provenance["step"] == 6
    x = torch.randn(2, 3, 8, 8)
    out = src(x, torch.tensor([0, 19]))
    assert out.shape == (2, 3, 8, 8)
    capsys.readouterr()
    assert main(["inspect", "--ckpt", str(run / "checkpoints" / "ckpt_0000006.pt")]) == 0
    info = __import__("json").loads(capsys.readouterr().out)
    assert info["step"] == 6 and info["format"] == "ddpm-bench/1" and len(info["sha256"]) == 64
    assert info["params"] == sum(v.numel() for v in c["ema"].values())
    assert info["model_identity"]["ema"] == src.identity.sha256 != info["model_identity"]["raw"]


def test_resuming_with_a_changed_setting_names_the_key(recipe, tmp_path, capsys):
    assert train(recipe, tmp_path / "run", "training.steps=2") == 0
    capsys.readouterr()
    assert train(recipe, tmp_path / "run", "training.lr=0.001") == 2
    err = without_schedule_warning(capsys.readouterr().err).strip().splitlines()
    assert len(err) == 1 and "training.lr" in err[0]


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(recipe, run, "training.lr=1e30", "training.warmup=0", "training.ckpt_every=1",
                 "training.keep_last=5") == 2
    err = without_schedule_warning(capsys.readouterr().err).strip().splitlines()
    assert len(err) == 1 and "not finite" in err[0] and "at step 2" in err[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt_0000001.pt"]


def test_a_non_empty_directory_without_a_run_is_refused(recipe, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    assert train(recipe, tmp_path / "busy") == 2
    assert "--force" in capsys.readouterr().err


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ddpm_bench", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env)


def test_unknown_recipe_key_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nbatchsize = 3\n")
    r = run_cli("train", "--recipe", str(bad), "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "training.batchsize" in lines[0] and str(bad) in lines[0]


def test_truncated_checkpoint_exits_2_with_one_line(recipe, tmp_path):
    assert train(recipe, tmp_path / "run", "training.steps=1") == 0
    good = (tmp_path / "run" / "checkpoints" / "ckpt_0000001.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good[: len(good) // 2])
    r = run_cli("inspect", "--ckpt", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]


@pytest.mark.parametrize("mean,var,objective", [
    ("mu", "learned", "L"), ("mu", "fixed-large", "L"), ("mu", "fixed-large", "mse"),
    ("eps", "learned", "L"), ("eps", "fixed-small", "L"), ("x0", "fixed-large", "L_simple"),
])
def test_every_table2_combination_trains(recipe, tmp_path, mean, var, objective, capsys):
    run = tmp_path / "run"
    assert train(recipe, run, f"diffusion.mean_type={mean}", f"diffusion.var_type={var}",
                 f"training.objective={objective}", "training.steps=2", "training.log_every=1") == 0
    losses = [float(r.split(",")[1]) for r in (run / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(v > 0 for v in losses)
    c = ckpt(run / "checkpoints" / "ckpt_0000002.pt")
    assert c["model"]["conv_out.weight"].shape[0] == (6 if var == "learned" else 3)


def test_a_moved_training_set_resumes_the_same_run(recipe, tmp_path, monkeypatch, capsys):
    """The training images are identified by their sha256, not by the path that names them."""
    run = tmp_path / "run"
    assert train(recipe, run, "training.steps=3") == 0
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "data.npz").rename(moved / "data.npz")
    monkeypatch.chdir(moved)
    capsys.readouterr()
    assert train(recipe, run, "training.data=data.npz") == 0  # relative, moved: the same images
    assert "resuming" in capsys.readouterr().err
    np.savez(moved / "data.npz", np.zeros((10, 8, 8, 3), np.uint8))  # other images under the same name
    assert train(recipe, run, "training.data=data.npz", "training.steps=6") == 2
    assert "data.sha256" in capsys.readouterr().err


def _step_grads(cfg, images, group: int, clip: float) -> tuple[list[torch.Tensor], float]:
    from dataclasses import replace

    from ddpm_bench.training import Trainer

    cfg = replace(cfg, training=replace(cfg.training, grad_clip=clip, grad_clip_group=group))
    trainer = Trainer(cfg, images, cfg.diffusion.schedule(), torch.device("cpu"))
    _, norm, _ = trainer.train_step()
    return [p.grad.clone() for p in trainer.model.parameters()], float(norm)


def test_clipping_per_group_of_images_as_the_official_trainer(recipe):
    """grad_clip_group = G: each group's gradient clipped on its own (tf.clip_by_global_norm), then averaged."""
    from ddpm_bench.config import load_recipe
    from ddpm_bench.data import load_images

    cfg = load_recipe(recipe, ["model.dropout=0.0"])
    images = torch.from_numpy(load_images(cfg.training.data, None, None).images).permute(0, 3, 1, 2).contiguous()
    whole, _ = _step_grads(cfg, images, 0, 1e9)  # batch 4, never clipped
    one_group, _ = _step_grads(cfg, images, 4, 1e9)
    singles, _ = _step_grads(cfg, images, 1, 1e9)  # the mean of per-image gradients is the batch gradient
    for a, b, c in zip(whole, one_group, singles, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)
    # a tight clip: each image's gradient becomes norm `clip`, so their mean is at most `clip` long, and not
    # the clipped batch gradient (which the whole-batch rule would give)
    clip = 1e-3
    per_image, mean_norm = _step_grads(cfg, images, 1, clip)
    whole_clipped, _ = _step_grads(cfg, images, 0, clip)
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in per_image])))
    assert norm <= clip * (1 + 1e-6) and mean_norm > clip
    assert not all(torch.allclose(a, b) for a, b in zip(per_image, whole_clipped, strict=True))


def test_grad_clip_group_must_divide_the_batch(recipe, capsys):
    assert train(recipe, recipe.parent / "run", "training.grad_clip_group=3") == 2
    assert "grad_clip_group must be 0 or divide training.batch_size 4" in capsys.readouterr().err


def test_l_hybrid_with_the_learned_range_variance_trains_and_resumes_exactly(recipe, tmp_path):
    sets = ("diffusion.var_type=\"learned-range\"", "training.objective=\"L_hybrid\"", "training.steps=4",
            "training.ckpt_every=2")
    assert train(recipe, tmp_path / "straight", *sets) == 0
    assert train(recipe, tmp_path / "resumed", *sets[:2], "training.steps=2", "training.ckpt_every=2") == 0
    assert train(recipe, tmp_path / "resumed", *sets) == 0
    a = ckpt(tmp_path / "straight" / "checkpoints" / "ckpt_0000004.pt")
    b = ckpt(tmp_path / "resumed" / "checkpoints" / "ckpt_0000004.pt")
    for key in ("model", "ema", "optimizer"):
        assert_same_state(a[key], b[key])


def test_importance_sampled_l_vlb_trains_and_resumes_exactly_with_its_history(recipe, tmp_path):
    """T = 4 and batch 4: every term has its 10 values after a few steps, so the second half of the run
    draws from p; the run resumed at step 10 takes the history from its checkpoint and ends the same."""
    sets = ("diffusion.T=4", "diffusion.var_type=\"learned-range\"", "training.objective=\"L_vlb\"",
            "training.steps=20", "training.ckpt_every=10")
    assert train(recipe, tmp_path / "straight", *sets) == 0
    assert train(recipe, tmp_path / "resumed", *sets[:3], "training.steps=10", "training.ckpt_every=10") == 0
    half = ckpt(tmp_path / "resumed" / "checkpoints" / "ckpt_0000010.pt")
    assert train(recipe, tmp_path / "resumed", *sets) == 0
    a = ckpt(tmp_path / "straight" / "checkpoints" / "ckpt_0000020.pt")
    b = ckpt(tmp_path / "resumed" / "checkpoints" / "ckpt_0000020.pt")
    for key in ("model", "ema", "optimizer", "resampler"):
        assert_same_state(a[key], b[key])
    assert half["resampler"]["count"].tolist() != [10] * 4  # still uniform at the restart ...
    assert a["resampler"]["count"].tolist() == [10] * 4  # ... importance-sampled at the end
    history = a["resampler"]["history"]
    assert history.dtype == torch.float64 and bool((history > 0).all())


def test_a_checkpoint_without_the_resampler_history_cannot_resume_l_vlb(recipe, tmp_path, capsys):
    from ddpm_bench.config import load_recipe
    from ddpm_bench.training import Trainer

    cfg = load_recipe(recipe, ["diffusion.T=4", "training.objective=\"L_vlb\""])
    trainer = Trainer(cfg, torch.zeros(2, 3, 8, 8), cfg.diffusion.schedule(), torch.device("cpu"))
    state = trainer.state_dict()
    del state["resampler"]
    with pytest.raises(ValueError, match="resampler history"):
        trainer.load_state_dict(state)


def test_a_run_started_before_settings_were_added_resumes_as_the_same_run(recipe, tmp_path, capsys):
    """A run written by a version without model.norm_groups, num_heads and scale_shift_norm (their
    defaults are the behaviour before they existed) resumes, and ends as a run that never stopped."""
    import json

    assert train(recipe, tmp_path / "straight", "training.steps=4") == 0
    old = tmp_path / "old"
    assert train(recipe, old, "training.steps=2", "training.ckpt_every=2") == 0
    added = ("norm_groups", "num_heads", "scale_shift_norm")
    for name in ("config.json", "run.json"):  # as the earlier version wrote them
        doc = json.loads((old / name).read_text())
        model = doc["model"] if name == "config.json" else doc["identity"]["config"]["model"]
        for key in added:
            del model[key]
        if name == "run.json":
            from ddpm_bench.run_dir import run_id_of
            doc["run_id"], doc["ddpm_bench_version"] = run_id_of("train", doc["identity"]), "0.1.0"
        (old / name).write_text(json.dumps(doc))
    path = old / "checkpoints" / "ckpt_0000002.pt"
    state = ckpt(path)
    for key in added:
        del state["config"]["model"][key]
    torch.save(state, path)
    capsys.readouterr()
    assert train(recipe, old, "training.steps=4") == 0
    err = capsys.readouterr().err
    assert "written by ddpm-bench 0.1.0" in err and "norm_groups: '<missing>' -> 32" in err
    a, b = ckpt(tmp_path / "straight" / "checkpoints" / "ckpt_0000004.pt"), ckpt(old / "checkpoints" / "ckpt_0000004.pt")
    for key in ("model", "ema", "optimizer"):
        assert_same_state(a[key], b[key])
    assert train(recipe, old, "training.steps=4", "model.norm_groups=16") == 2  # a real difference still refused


def test_the_bound_logged_while_training_is_the_commands_on_that_checkpoint(tmp_path, capsys):
    """[training.eval]: every 2 steps the EMA weights' `nll --terms K` of the first images of a held-out set,
    in eval.csv; the same number as the command on the checkpoint of that step, images and seed."""
    import csv
    import json

    rng = np.random.default_rng(0)
    data, held_out = tmp_path / "d.npz", tmp_path / "h.npz"
    np.savez(data, rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    np.savez(held_out, rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.format(data=data))
    run = tmp_path / "run"
    sets = ["training.steps=4", "training.ckpt_every=2", "training.keep_last=5", "training.eval.every=2",
            f"training.eval.data={held_out}", "training.eval.images=5", "training.eval.terms=3", "training.eval.seed=7"]
    assert train(recipe, run, *sets) == 0
    rows = list(csv.DictReader(open(run / "eval.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4] and all(r["n_images"] == "5" and r["terms"] == "3" for r in rows)
    assert "step 4: bound ~" in capsys.readouterr().err
    for r in rows:
        out = tmp_path / f"nll{r['step']}"
        ckpt = run / "checkpoints" / f"ckpt_{int(r['step']):07d}.pt"
        assert main(["nll", "--ckpt", str(ckpt), "--data", str(held_out), "--num-images", "5", "--terms", "3",
                     "--seed", "7", "--no-progress", "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert float(r["bpd"]) == summary["total_bpd"] and float(r["bpd_stderr"]) == summary["total_bpd_stderr"]
    # a resume from step 2 evaluates step 4 again, not twice
    (run / "checkpoints" / "ckpt_0000004.pt").unlink()
    assert train(recipe, run, *sets) == 0
    assert [int(r["step"]) for r in csv.DictReader(open(run / "eval.csv"))] == [2, 4]
