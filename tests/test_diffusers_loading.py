"""Loading a diffusers UNet2DModel directory (`--ckpt DIR`), checked against diffusers' own DDPMScheduler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm_bench.cli import main
from ddpm_bench.diffusion import p_mean_logvar
from ddpm_bench.errors import UserError

diffusers = pytest.importorskip("diffusers")

from ddpm_bench.models.formats.diffusers_dir import load_directory  # noqa: E402


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A randomly initialised tiny UNet2DModel and a DDPMScheduler with T = 20, saved as a pipeline folder."""
    d = tmp_path_factory.mktemp("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained(d / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=20, variance_type="fixed_large").save_pretrained(d / "scheduler")
    return d


def test_loads_unet_scheduler_settings_and_provenance(pipeline_dir):
    src = load_directory(pipeline_dir, {})
    assert (src.diffusion.T, src.diffusion.beta_schedule, src.diffusion.mean_type, src.diffusion.var_type) == \
        (20, "linear", "eps", "fixed-large")
    assert src.image_shape == (3, 8, 8)
    assert src.provenance["kind"] == "diffusers" and len(src.provenance["sha256"]) == 64
    assert src.provenance["weights_files"] == ["diffusion_pytorch_model.safetensors"]
    unet = diffusers.UNet2DModel.from_pretrained(pipeline_dir / "unet")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 17])
    with torch.no_grad():
        assert torch.equal(src.backbone(x, t), unet(x, t).sample)
    # the same weights give the same hash; other weights another
    assert load_directory(pipeline_dir / "unet", {}).provenance["sha256"] == src.provenance["sha256"]


def test_contradicting_flag_is_an_error(pipeline_dir):
    with pytest.raises(UserError, match="--var-type fixed-small contradicts"):
        load_directory(pipeline_dir, {"var_type": "fixed-small"})


def _ours_and_theirs(cfg, s, sched, out, x, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step at index i with clipping: ours (float64) and DDPMScheduler.step's, with the same z."""
    step = p_mean_logvar(cfg, s, out, x, torch.full((x.shape[0],), i), clip=True)
    z = torch.randn(*x.shape, generator=torch.Generator().manual_seed(i))
    ours = step.mean + torch.exp(0.5 * step.logvar) * z.double()
    theirs = sched.step(out, i, x.float(), generator=torch.Generator().manual_seed(i)).prev_sample
    return ours, theirs


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_one_reverse_step_matches_diffusers_ddpm_scheduler(pipeline_dir, variance_type):
    """Our p(x_{t-1} | x_t) with clipping, against DDPMScheduler.step with the same z, for t > 1."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=20, variance_type=variance_type)
    from ddpm_bench.models.formats.diffusers_dir import diffusion_from_scheduler

    cfg = diffusion_from_scheduler(dict(sched.config), "scheduler")
    s = cfg.schedule()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    out = 3 * torch.randn(2, 3, 8, 8, generator=g)  # large, so that clipping matters
    for i in (1, 9, 19):
        ours, theirs = _ours_and_theirs(cfg, s, sched, out, x, i)
        # diffusers works in float32, where 1 - alpha-bar_2 (about 3e-4) keeps only ~4 significant digits
        assert torch.allclose(ours, theirs.double(), rtol=0, atol=1e-4), (i, (ours - theirs).abs().max())
        if i > 1:
            assert torch.allclose(ours, theirs.double(), rtol=0, atol=1e-5), (i, (ours - theirs).abs().max())


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_each_prediction_type_steps_as_diffusers_ddpm_scheduler(prediction_type):
    """prediction_type epsilon / sample / v_prediction load as eps / x0 / v, and one reverse step with
    clipping matches DDPMScheduler.step with the same z."""
    from ddpm_bench.models.formats.diffusers_dir import diffusion_from_scheduler

    sched = diffusers.DDPMScheduler(num_train_timesteps=20, variance_type="fixed_small", prediction_type=prediction_type)
    cfg = diffusion_from_scheduler(dict(sched.config), "scheduler")
    assert cfg.mean_type == {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[prediction_type]
    s = cfg.schedule()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    out = torch.randn(2, 3, 8, 8, generator=g)
    for i in (5, 12, 19):
        ours, theirs = _ours_and_theirs(cfg, s, sched, out, x, i)
        # diffusers steps in float32: agreement to its rounding (a few 1e-6 here, relative to values of ~1)
        assert torch.allclose(ours, theirs.double(), rtol=0, atol=3e-5), (i, (ours - theirs).abs().max())


def test_sample_command_with_a_diffusers_directory(pipeline_dir, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--ckpt", str(pipeline_dir), "--num", "3", "--steps", "5", "--no-progress",
                 "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["kind"] == "diffusers" and m["sampler"]["timesteps"] == [0, 5, 10, 14, 19]
    with np.load(out / "samples_000000.npz") as z:
        assert z["arr_0"].shape == (3, 8, 8, 3)
    assert main(["sample", "--ckpt", str(pipeline_dir), "--num", "3", "--image-size", "16", "--out",
                 str(tmp_path / "t")]) == 2


def test_a_v_prediction_pipeline_directory_bounds_and_samples(tmp_path, pipeline_dir):
    """A saved UNet2DModel with a v_prediction scheduler loads as mean type v; nll and sample run on it."""
    import shutil

    from ddpm_bench.cli import main

    d = tmp_path / "vpipe"
    shutil.copytree(pipeline_dir / "unet", d / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=20, variance_type="fixed_large",
                            prediction_type="v_prediction").save_pretrained(d / "scheduler")
    assert load_directory(d, {}).diffusion.mean_type == "v"
    np.savez(tmp_path / "x.npz", np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    assert main(["nll", "--ckpt", str(d), "--data", str(tmp_path / "x.npz"), "--no-progress",
                 "--out", str(tmp_path / "n")]) == 0
    assert main(["sample", "--ckpt", str(d), "--num", "2", "--no-progress", "--out", str(tmp_path / "s")]) == 0
