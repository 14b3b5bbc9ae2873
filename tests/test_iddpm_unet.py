"""improved-diffusion's U-Net and flags (Nichol & Dhariwal 2021) against two of its checkpoints and outputs.

The fixture (tests/fixtures/iddpm_small, README.md there): two small models saved by openai/improved-diffusion
with random weights in every layer, and for 6 inputs the raw network output and `p_mean_variance(...,
clip_denoised=False)`, computed by its own code in float32. Tolerances are relative to each array's largest
magnitude (pred_xstart of hybrid_cosine reaches 8,280 at the last cosine step).

The fixture's `model_output` is `model(x, diffusion._scale_timesteps(t))`; `create_gaussian_diffusion` always
returns a `SpacedDiffusion`, whose `_scale_timesteps` returns t unchanged (it rescales inside `_WrappedModel`,
which `p_mean_variance` uses). So `model_output` is the network at the index t even with rescale_timesteps,
while `mean`, `log_variance` and `pred_xstart` come from the network at t * 1000 / T; the tests check both.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_bench.diffusion import DiffusionConfig, p_mean_logvar
from ddpm_bench.errors import CheckpointError, UserError
from ddpm_bench.models.iddpm_flags import check_state_dict, iddpm_model, parse_flags, timestep_input
from ddpm_bench.models.iddpm_unet import IddpmUNet, timestep_embedding

HERE = Path(__file__).resolve()
FIXTURE_DIRS = (HERE.parent / "fixtures/iddpm_small", HERE.parents[2] / "shared/fixtures/iddpm_small")
MODELS = ("hybrid_cosine", "xstart_linear")
# improved-diffusion's float32 arithmetic against this project's float64 reverse process from the float32
# output; measured: at most 1.8e-6 (the fixture's README: its own code reproduces itself within 1e-6 on one
# thread); a GroupNorm eps of 1e-6 instead of 1e-5 moves the output by 3e-5
RTOL = 1e-5


def fixture_dir() -> Path:
    for d in FIXTURE_DIRS:
        if (d / "README.md").is_file():
            return d
    pytest.skip(f"the improved-diffusion fixture is in none of {', '.join(map(str, FIXTURE_DIRS))}")


def load(name: str):
    d = fixture_dir()
    flags = parse_flags((d / f"{name}_flags.txt").read_text())
    state = torch.load(d / f"{name}.pt", map_location="cpu", weights_only=True)
    io = dict(np.load(d / f"{name}_io.npz"))
    return flags, state, io


def rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|."""
    assert ours.shape == ref.shape
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def test_flags_of_the_fixture_models_resolve_as_improved_diffusion_does():
    flags = parse_flags((fixture_dir() / "hybrid_cosine_flags.txt").read_text())
    assert flags.model == dict(in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                               attention_resolutions=(2, 4), dropout=0.3, channel_mult=(1, 2, 2, 2),
                               conv_resample=True, num_classes=None, num_heads=4, num_heads_upsample=-1,
                               use_scale_shift_norm=True)
    assert flags.diffusion == dict(T=100, beta_schedule="cosine", mean_type="eps", var_type="learned-range")
    assert flags.rescale_timesteps and flags.ignored == ()

    flags = parse_flags((fixture_dir() / "xstart_linear_flags.txt").read_text())
    assert flags.model["attention_resolutions"] == (4,) and flags.model["out_channels"] == 3
    assert flags.model["num_heads"] == 2 and not flags.model["use_scale_shift_norm"]
    assert flags.diffusion == dict(T=50, beta_schedule="linear", beta_start=1000 / 50 * 1e-4,
                                   beta_end=1000 / 50 * 0.02, mean_type="x0", var_type="fixed-large")
    assert not flags.rescale_timesteps


@pytest.mark.parametrize("name", MODELS)
def test_network_output_is_improved_diffusions(name, one_thread):
    flags, state, io = load(name)
    unet = IddpmUNet(**flags.model).eval()
    unet.load_state_dict(state, strict=True)
    x, t = torch.from_numpy(io["x"]), torch.from_numpy(io["t"])
    with torch.no_grad():
        at_index = unet(x, timestep_input(t, flags.T, rescale=False)).numpy()
        at_rescaled = unet(x, timestep_input(t, flags.T, rescale=True)).numpy()
    assert rel_diff(at_index, io["model_output"]) < RTOL
    if flags.rescale_timesteps:  # the test tells the two timestep inputs apart
        assert rel_diff(at_rescaled, io["model_output"]) > 1e-2


@pytest.mark.parametrize("name", MODELS)
def test_reverse_process_is_improved_diffusions_p_mean_variance(name, one_thread):
    flags, state, io = load(name)
    unet = iddpm_model(flags, state)
    cfg = DiffusionConfig(**flags.diffusion)
    schedule = cfg.schedule()
    x, i = torch.from_numpy(io["x"]), torch.from_numpy(io["t"])
    with torch.no_grad():
        output = unet(x, timestep_input(i, flags.T, flags.rescale_timesteps))  # step indices, rescaled as the flags say
    step = p_mean_logvar(cfg, schedule, output, x.to(torch.float64), i, clip=False)
    assert rel_diff(step.mean.numpy(), io["mean"]) < RTOL
    assert rel_diff(step.logvar.expand_as(step.mean).numpy(), io["log_variance"]) < RTOL
    assert rel_diff(step.x0_hat.numpy(), io["pred_xstart"]) < RTOL


def test_our_betas_are_improved_diffusions():
    # improved DDPM Eq. 17 as improved-diffusion discretises it: beta_i = min(1 - alpha-bar((i + 1) / T) /
    # alpha-bar(i / T), 0.999), alpha-bar(u) = cos((u + 0.008) / 1.008 * pi / 2)^2; linear: DDPM's scaled by
    # 1000 / T
    def alpha_bar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    for T in (1, 100, 4000):
        cfg = parse_flags(f"--diffusion_steps {T} --noise_schedule cosine").diffusion_config()
        ref = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        assert np.array_equal(cfg.schedule().betas.numpy(), np.array(ref))
    for T in (50, 1000, 4000):
        cfg = parse_flags(f"--diffusion_steps {T}").diffusion_config()
        ref = np.linspace(0.1 / T, 20 / T, T)
        np.testing.assert_allclose(cfg.schedule().betas.numpy(), ref, rtol=1e-15, atol=0)


def test_timestep_input_rescales_integer_and_fractional_indices():
    i = torch.tensor([0, 1, 99])
    assert torch.equal(timestep_input(i, 100, rescale=True), torch.tensor([0.0, 10.0, 990.0]))
    assert timestep_input(i, 100, rescale=True).dtype == torch.float32
    assert torch.equal(timestep_input(i, 100, rescale=False), torch.tensor([0.0, 1.0, 99.0]))
    frac = torch.tensor([0.5, 2.25], dtype=torch.float64)
    assert torch.equal(timestep_input(frac, 4000, rescale=True),
                       torch.tensor([0.125, 0.5625], dtype=torch.float64))
    assert timestep_input(frac, 4000, rescale=False) is frac


def test_timestep_embedding_is_cosine_then_sine_with_half_in_the_exponent():
    t = torch.tensor([0.0, 3.0, 250.5])
    emb = timestep_embedding(t, 9)  # half = 4, one zero column
    w = 10000.0 ** (-torch.arange(4) / 4)
    assert emb.shape == (3, 9) and torch.all(emb[:, 8] == 0)
    torch.testing.assert_close(emb[:, :4], torch.cos(t[:, None] * w), rtol=0, atol=1e-5)
    torch.testing.assert_close(emb[:, 4:8], torch.sin(t[:, None] * w), rtol=0, atol=1e-5)


def test_defaults_are_model_and_diffusion_defaults():
    flags = parse_flags("")
    assert flags.model == dict(in_channels=3, model_channels=128, out_channels=3, num_res_blocks=2,
                               attention_resolutions=(4, 8), dropout=0.0, channel_mult=(1, 2, 3, 4),
                               conv_resample=True, num_classes=None, num_heads=4, num_heads_upsample=-1,
                               use_scale_shift_norm=True)
    assert flags.diffusion == dict(T=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   mean_type="eps", var_type="fixed-large")
    assert flags.rescale_timesteps and flags.image_size == 64


def test_variance_and_mean_flags_and_ignored_training_flags():
    flags = parse_flags("--sigma_small True --predict_xstart True --lr 1e-4 --batch_size 128 --use_kl=True "
                        "--rescale_learned_sigmas False --timestep_respacing ''")
    assert flags.diffusion["var_type"] == "fixed-small" and flags.diffusion["mean_type"] == "x0"
    assert flags.ignored == ("lr", "batch_size", "use_kl", "rescale_learned_sigmas")
    assert parse_flags("--learn_sigma T --sigma_small True").diffusion["var_type"] == "learned-range"


@pytest.mark.parametrize("size, mult", [(32, (1, 2, 2, 2)), (64, (1, 2, 3, 4)), (256, (1, 1, 2, 2, 4, 4))])
def test_each_image_size_builds_its_network(size, mult):
    flags = parse_flags(f"--image_size {size} --learn_sigma True --class_cond True --num_heads 1")
    assert flags.model["channel_mult"] == mult
    assert flags.model["attention_resolutions"] == (size // 16, size // 8)
    with torch.device("meta"):
        unet = IddpmUNet(**flags.model)
        out = unet(torch.zeros(2, 3, size, size), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 6, size, size)
    assert unet.label_emb.weight.shape == (1000, 512)


def test_class_labels_change_the_output_and_are_required(one_thread):
    torch.manual_seed(0)
    flags = parse_flags("--image_size 32 --num_channels 32 --num_res_blocks 1 --class_cond True")
    unet = IddpmUNet(**flags.model)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3.0, 400.0])
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        a, b = unet(x, t, torch.tensor([1, 2])), unet(x, t, torch.tensor([5, 2]))
    assert not torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="class labels"):
        unet(x, t)


@pytest.mark.parametrize("change, message", [
    (("--num_channels 32", "--num_channels 64"),
     "time_embed.0.weight has shape (128, 32) in the checkpoint and (256, 64) in the flags' network; "
     "check --num_channels"),
    (("--learn_sigma True", ""),
     "out.2.weight has shape (6, 32, 3, 3) in the checkpoint and (3, 32, 3, 3) in the flags' network; "
     "check --learn_sigma"),
    (("--num_heads 4", "--num_heads 4 --use_scale_shift_norm False"),
     "input_blocks.1.0.emb_layers.1.weight has shape (64, 128) in the checkpoint and (32, 128) in the flags' "
     "network; check --use_scale_shift_norm"),
    (("--attention_resolutions 16,8", "--attention_resolutions 8"),
     "the checkpoint has input_blocks.3.1.norm.weight (64,), which the flags' network lacks; "
     "check --attention_resolutions"),
    (("--learn_sigma True", "--learn_sigma True --class_cond True"),
     "the checkpoint lacks label_emb.weight (1000, 128), which the flags' network has; check --class_cond"),
])
def test_flags_that_contradict_the_checkpoint_name_the_first_mismatch(change, message):
    d = fixture_dir()
    text = (d / "hybrid_cosine_flags.txt").read_text()
    assert change[0] in text
    flags = parse_flags(text.replace(change[0], change[1]))
    state = torch.load(d / "hybrid_cosine.pt", map_location="cpu", weights_only=True)
    with torch.device("meta"):
        unet = IddpmUNet(**flags.model)
    with pytest.raises(CheckpointError) as e:
        check_state_dict(unet, state)
    assert message in str(e.value)
    with pytest.raises(CheckpointError, match="lacks"):
        check_state_dict(unet, {k: v for k, v in unet.state_dict().items() if k != "out.0.bias"})


@pytest.mark.parametrize("flags, message", [
    ("--image_size 32 --num_channel 64", "--num_channel: not a flag of improved-diffusion's scripts; "
                                         "did you mean --num_channels?"),
    ("--learn_sigma maybe", "--learn_sigma 'maybe': expected a boolean"),
    ("--learn_sigma --dropout 0.3", "--learn_sigma: no value given"),
    ("--dropout 0.3 --learn_sigma", "--learn_sigma: no value given"),
    ("--num_channels 12x", "--num_channels '12x': expected an integer"),
    ("--image_size 32 64", "'64': a value without a flag (after --image_size 32)"),
    ("--learn_sigma True --learn_sigma False", "--learn_sigma is given twice"),
    ("--timestep_respacing 250", "--timestep_respacing 250: a respaced process is not the model's 1000-step"),
    ("--timestep_respacing ddim50", "--timestep_respacing ddim50"),
    ("--image_size 128", "--image_size 128: improved-diffusion builds 32, 64, 256"),
    ("--num_channels 48", "--num_channels 48: must be a positive multiple of 32"),
    ("--num_heads 3", "--num_heads 3: attention with 512 channels cannot be split into 3 heads"),
    ("--attention_resolutions 16,x", "--attention_resolutions '16,x'"),
    ("--noise_schedule quad", "--noise_schedule 'quad'"),
    ("--diffusion_steps 20", "--diffusion_steps 20: the linear schedule's last beta"),
])
def test_bad_flags_are_one_line_user_errors_naming_the_flag(flags, message):
    with pytest.raises(UserError) as e:
        parse_flags(flags)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
