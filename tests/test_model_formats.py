"""The models people quote: improved-diffusion checkpoints with their flags, and diffusers models by Hub id,
through the command line and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm_bench
from ddpm_bench.cli import main
from ddpm_bench.diffusion import p_mean_logvar
from tests.test_iddpm_unet import MODELS, RTOL, fixture_dir


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("name", MODELS)
def test_the_fixture_models_compute_what_improved_diffusion_computed(name):
    """Loaded through the API from its file and flags, the network (with improved-diffusion's timestep
    rescaling applied by the wrapper) and this project's reverse process give the fixture's mean,
    log-variance and x0 prediction."""
    d = fixture_dir()
    flags = (d / f"{name}_flags.txt").read_text().strip()
    net = ddpm_bench.load_model(d / f"{name}.pt", flags=flags, device="cpu", channels_last=False)
    io = np.load(d / f"{name}_io.npz")
    x, t = torch.from_numpy(io["x"]), torch.from_numpy(io["t"])
    with torch.no_grad():
        out = net(x, t)
    step = p_mean_logvar(net.diffusion, net.diffusion.schedule(), out.double(), x.double(), t, clip=False)
    assert rel(step.mean, io["mean"]) < RTOL
    assert rel(step.logvar.expand_as(step.mean), io["log_variance"]) < RTOL
    assert rel(step.x0_hat, io["pred_xstart"]) < RTOL


@pytest.mark.parametrize("name", MODELS)
def test_nll_and_sample_of_the_fixture_models_from_the_command_line(name, tmp_path, capsys):
    d = fixture_dir()
    flags = (d / f"{name}_flags.txt").read_text().strip()
    out = tmp_path / "nll"
    assert main(["nll", "--ckpt", str(d / f"{name}.pt"), "--flags", flags, "--data", "embedded:test",
                 "--num-images", "2", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ident = summary["model"]["identity"]
    assert ident["kind"] == "improved-diffusion" and ident["architecture"]["improved_diffusion_flags"]["num_channels"] == 32
    assert summary["T"] == int(flags.split("--diffusion_steps ")[1].split()[0])
    api = ddpm_bench.bound(ddpm_bench.load_model(d / f"{name}.pt", flags=flags), "embedded:test", num_images=2)
    with np.load(out / "per_image.npz") as z:
        assert np.array_equal(api.per_image.terms, z["terms"])  # the command and the API, to the bit
    assert main(["sample", "--ckpt", str(d / f"{name}.pt"), "--flags", flags, "--num", "2", "--steps", "5",
                 "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["count"] == 2
    capsys.readouterr()
    assert main(["inspect", "--ckpt", str(d / f"{name}.pt"), "--flags", flags]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "improved-diffusion" and info["model_identity"] == ident["sha256"]
    assert info["params"] == sum(v.numel() for v in torch.load(d / f"{name}.pt", weights_only=True).values())


def test_the_identity_is_the_weights_and_the_flags_that_change_the_function(tmp_path):
    d = fixture_dir()
    flags = (d / "xstart_linear_flags.txt").read_text().strip()
    a = ddpm_bench.load_model(d / "xstart_linear.pt", flags=flags)
    b = ddpm_bench.load_model(d / "xstart_linear.pt", flags=flags + " --lr 3e-4 --batch_size 64")  # training only
    c = ddpm_bench.load_model(d / "xstart_linear.pt", flags=flags.replace("--rescale_timesteps False",
                                                                          "--rescale_timesteps True"))
    assert a.identity.sha256 == b.identity.sha256 != c.identity.sha256


@pytest.mark.parametrize("change,needle", [
    (("--num_channels 32", "--num_channels 64"), "time_embed.0.weight has shape (128, 32) in the checkpoint and "
                                                 "(256, 64) in the flags' network"),
    (("--learn_sigma True", "--learn_sigma False"), "out.2.weight has shape (6, 32, 3, 3)"),
    (("--noise_schedule cosine", "--noise_schedule cosine --colour red"), "--colour: not a flag"),
    (("--learn_sigma True", "--learn_sigma maybe"), "--learn_sigma 'maybe'"),
])
def test_flags_that_do_not_fit_the_state_dict_are_one_line(tmp_path, capsys, change, needle):
    d = fixture_dir()
    flags = (d / "hybrid_cosine_flags.txt").read_text().strip().replace(*change)
    assert main(["nll", "--ckpt", str(d / "hybrid_cosine.pt"), "--flags", flags, "--data", "embedded:test",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_flags_with_a_ddpm_bench_checkpoint_or_a_plugin_are_refused(tmp_path, capsys):
    assert main(["nll", "--model", "tests/plugins.py:tiny_conv_T20", "--flags", "--image_size 32", "--data",
                 "embedded:test", "--out", str(tmp_path / "o")]) == 2
    assert "--flags describes an improved-diffusion checkpoint" in capsys.readouterr().err


# -- Hub ids --------------------------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path) -> Path:
    """A Hugging Face cache holding org/tiny-ddpm at COMMIT (refs/main), in the layout huggingface_hub writes."""
    diffusers = pytest.importorskip("diffusers")
    repo = root / "models--org--tiny-ddpm"
    snap = repo / "snapshots" / COMMIT
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained(snap / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=10, variance_type="fixed_large").save_pretrained(snap / "scheduler")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def test_a_hub_id_resolves_from_the_offline_cache(tmp_path, monkeypatch, capsys):
    snap = hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    np.savez(tmp_path / "d.npz", np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    out = tmp_path / "o"
    assert main(["nll", "--ckpt", "hf:org/tiny-ddpm", "--data", str(tmp_path / "d.npz"), "--no-progress",
                 "--out", str(out)]) == 0
    model = json.loads((out / "summary.json").read_text())["model"]
    assert model["hub"] == {"repo": "org/tiny-ddpm", "revision": None, "commit": COMMIT}
    direct = ddpm_bench.load_model(snap)  # the same files from their folder: the same model
    assert model["identity"]["sha256"] == direct.identity.sha256
    assert main(["inspect", "--ckpt", f"hf:org/tiny-ddpm@{COMMIT}"]) == 0


def test_a_hub_id_missing_offline_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["nll", "--ckpt", "hf:google/ddpm-cifar10-32", "--data", "embedded:test", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`hf download google/ddpm-cifar10-32`" in err[0]
    assert main(["nll", "--ckpt", "hf:not an id", "--data", "embedded:test", "--out", str(tmp_path / "o")]) == 2
