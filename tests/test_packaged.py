"""The model that ships with the install: `--ckpt embedded` (SPEC section 2)."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_bench import load_model
from ddpm_bench.cli import main
from ddpm_bench.errors import CheckpointError
from ddpm_bench.models.formats import packaged
from ddpm_bench.provenance import sha256_file

FILE, SHA256 = packaged.PACKAGED["embedded"]
CONTINUOUS_FILE, CONTINUOUS_SHA256 = packaged.PACKAGED["embedded-continuous"]


def test_the_packaged_file_is_the_one_named_in_the_code_and_small():
    assert FILE.is_file() and sha256_file(FILE) == SHA256
    assert FILE.stat().st_size <= 10 * 2**20


def test_inspect_names_its_training_and_identity(capsys):
    assert main(["inspect", "--ckpt", "embedded"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sha256"] == SHA256 and info["params"] == 1_113_955
    assert info["config"]["training"]["data"] == "embedded:train" and info["step"] >= 5000
    assert info["data"]["source"] == "embedded:train" and set(info["model_identity"]) == {"ema", "raw"}


def test_its_test_bound_is_far_below_8_bits_per_dim(tmp_path, capsys):
    out = tmp_path / "nll"
    assert main(["nll", "--ckpt", "embedded", "--data", "embedded:test", "--num-images", "2", "--no-progress",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["packaged"] == "embedded" and summary["model"]["sha256"] == SHA256
    assert summary["total_bpd"] < 5.0  # an untrained network of this size: about 8 bits/dim and more


@pytest.mark.parametrize("name", ["embedded", "embedded-continuous"])
@pytest.mark.parametrize("damage", ["flipped", "missing"])
def test_a_damaged_or_missing_packaged_model_is_one_line_exit_2(tmp_path, monkeypatch, capsys, damage, name):
    file, sha256 = packaged.PACKAGED[name]
    copy = tmp_path / file.name
    if damage == "flipped":
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(bytes(data))
    monkeypatch.setitem(packaged.PACKAGED, name, (copy, sha256))
    assert main(["nll", "--ckpt", name, "--data", "embedded:test", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("is damaged" if damage == "flipped" else "missing from this installation") in err
    assert not (tmp_path / "o").exists()


def test_it_sees_colour():
    """A U-Net whose every GroupNorm has one channel per group removes each channel's mean and cannot see an
    image's colour (its samples came out flat and saturated). At t = T, x_t is nearly all noise
    (sqrt(abar_T) = 0.006), so a colour shift of x_t is a shift of the noise, and the predicted noise
    should follow it (ideally by the whole shift): here by a fifth of it or more (the blind model: 1%)."""
    from ddpm_bench.checkpoint import load_checkpoint
    from ddpm_bench.models.registry import build_model

    ckpt = load_checkpoint(FILE)
    net = build_model(ckpt["config"]["model"])
    net.load_state_dict(ckpt["ema"])
    net.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([0.5, -0.5, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        i = torch.full((4,), 999)
        moved = (net(x + shift, i) - net(x, i)).mean(dim=(0, 2, 3))
    assert (moved.abs() >= 0.2 * shift.flatten().abs()).all(), moved


# ---------------------------------------------------------------------------------------------- embedded-continuous

def test_the_packaged_continuous_model_loads_checked_with_its_convention():
    assert CONTINUOUS_FILE.is_file() and sha256_file(CONTINUOUS_FILE) == CONTINUOUS_SHA256
    assert CONTINUOUS_FILE.stat().st_size <= 5 * 2**20  # the EMA weights only
    net = load_model("embedded-continuous", device="cpu")
    conv = net.model.convention
    assert (conv.noise_input, conv.schedule, conv.prediction) == ("t", "vdm-linear", "eps")
    assert (conv.gamma_min, conv.gamma_max, conv.time_scale) == (-13.3, 5.0, 1000.0)
    prov = net.model.provenance
    assert prov["packaged"] == "embedded-continuous" and prov["sha256"] == CONTINUOUS_SHA256 and prov["step"] >= 5000
    assert net.model.identity.architecture["noise"] == conv.to_dict()
    with pytest.raises(CheckpointError, match="holds only its EMA weights"):
        load_model("embedded-continuous", weights="raw")


def test_inspect_names_the_continuous_models_training(capsys):
    assert main(["inspect", "--ckpt", "embedded-continuous"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sha256"] == CONTINUOUS_SHA256 and info["params"] == 1_113_955 and set(info["model_identity"]) == {"ema"}
    assert info["config"]["training"]["objective"] == "vdm" and info["config"]["noise"]["noise_input"] == "t"
    assert info["data"]["source"] == "embedded:train" and info["packaged"] == "embedded-continuous"


def test_the_continuous_model_is_trained_its_vdm_loss_far_below_an_untrained_networks(one_thread):
    """VDM's diffusion loss of the EMA weights on 64 test images (t low-discrepancy, fixed noise): an untrained
    network (eps_hat near 0) has about 0.5 * 18.3 / ln 2 = 13.2 bits/dim."""
    from ddpm_bench.checkpoint import load_checkpoint
    from ddpm_bench.data import load_images
    from ddpm_bench.losses import diffuse, vdm_diffusion_loss
    from ddpm_bench.models.registry import build_model
    from ddpm_bench.noise_level import NoiseConvention

    ckpt = load_checkpoint(CONTINUOUS_FILE)
    net = build_model(ckpt["config"]["model"])
    net.load_state_dict(ckpt["ema"])
    net.eval()
    conv = NoiseConvention(**ckpt["config"]["noise"])
    sched = conv.time_schedule()
    x = torch.from_numpy(load_images("embedded:test", None, 64).images).permute(0, 3, 1, 2).double() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    t = torch.remainder(torch.rand((), generator=g, dtype=torch.float64) + torch.arange(64) / 64, 1.0)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    gamma = sched.gamma(t)
    with torch.no_grad():
        eps_hat = net(diffuse(x, gamma, eps).float(), conv.network_input(gamma))
    loss = vdm_diffusion_loss(eps, eps_hat, sched.dgamma_dt(t)).mean()
    assert loss < 6.0, loss
