"""The reference trainer's continuous-time objective (VDM's diffusion loss, `training.objective = "vdm"` with a
`[noise]` table): the recipe checks, exact resume, the stratified times, and the checkpoint's noise
convention and identity."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_bench import load_model
from ddpm_bench.cli import main
from ddpm_bench.config import config_from_dict, load_recipe
from ddpm_bench.errors import ConfigError
from tests.test_train import TINY, assert_same_state, ckpt, train

ROOT = Path(__file__).parents[1]
NOISE = """
[noise]
noise_input = "t"
schedule = "vdm-linear"
gamma_min = -13.3
gamma_max = 5.0
time_scale = 1000
"""


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here at one thread (see conftest.one_thread)."""


@pytest.fixture
def recipe(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    path = tmp_path / "tiny_continuous.toml"
    path.write_text(TINY.format(data=data).replace('[training]\n', '[training]\nobjective = "vdm"\n') + NOISE)
    return path


CONTINUOUS = {"noise": {"noise_input": "t", "schedule": "vdm-linear"}, "training": {"objective": "vdm"}}


@pytest.mark.parametrize("tables, message", [
    ({"noise": CONTINUOUS["noise"]}, "training.objective = 'L_simple' is a discrete DDPM's objective, but "
                                     "noise.noise_input = 't'"),
    ({"training": {"objective": "vdm"}}, "training.objective = 'vdm' trains a continuous-time model: give a [noise]"),
    ({**CONTINUOUS, "noise": {"noise_input": "sigma", "gamma_min": -12.4, "gamma_max": 8.8}},
     "noise.noise_input = 'sigma' is not trained by the reference trainer"),
    ({**CONTINUOUS, "noise": {"noise_input": "gamma", "gamma_min": -10.0, "gamma_max": 5.0, "schedule": "cosine"}},
     "noise.schedule = 'cosine' with noise.noise_input = 'gamma'"),
    ({**CONTINUOUS, "noise": {**CONTINUOUS["noise"], "prediction": "x0"}}, "noise.prediction = 'x0'"),
    ({**CONTINUOUS, "diffusion": {"mean_type": "x0"}}, "diffusion.mean_type = 'x0' contradicts noise.prediction"),
    ({**CONTINUOUS, "diffusion": {"var_type": "learned-range"}}, "diffusion.var_type = 'learned-range'"),
    ({**CONTINUOUS, "noise": {"noise_input": "t"}}, "[noise] noise_input 't' needs schedule"),
    ({**CONTINUOUS, "noise": {"noise_input": "gamma", "gamma_min": 5.0, "gamma_max": -10.0}},
     "[noise] gamma_min 5.0 must be below gamma_max -10.0"),
    # one end of vdm-linear's range given: checked with VDM's other end (6 > 5.0 would reverse the loss's sign)
    ({**CONTINUOUS, "noise": {**CONTINUOUS["noise"], "gamma_min": 6.0}},
     "[noise] vdm-linear needs gamma_min < gamma_max, got 6.0 and 5.0"),
    ({**CONTINUOUS, "noise": {**CONTINUOUS["noise"], "gamma_max": -13.3}},
     "[noise] vdm-linear needs gamma_min < gamma_max, got -13.3 and -13.3"),
    # a schedule with its own range does not take one (it would be recorded and ignored)
    ({**CONTINUOUS, "noise": {**CONTINUOUS["noise"], "schedule": "vp-linear", "gamma_min": -5.0, "gamma_max": 3.0}},
     "[noise] schedule 'vp-linear' fixes its own range (gamma from -14.51 to 5.018"),
    ({**CONTINUOUS, "noise": {**CONTINUOUS["noise"], "time_scale": "big"}}, "noise.time_scale = 'big': expected float"),
    ({**CONTINUOUS, "noise": {**CONTINUOUS["noise"], "steps": 3}}, "unknown key 'noise.steps'"),
    ({"training": {"time_sampling": "uniform"}}, "training.time_sampling is the continuous objective's"),
    ({**CONTINUOUS, "training": {"objective": "vdm", "time_sampling": "sobol"}}, "training.time_sampling must be one of"),
    ({**CONTINUOUS, "training": {"objective": "vdm", "eval": {"every": 10}}},
     "until the continuous bound (`nll --continuous`) can evaluate it"),
])
def test_recipe_refusals_are_one_line_naming_the_keys(tables, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(tables, "recipe r.toml")
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("recipe r.toml")


def test_a_refused_recipe_exits_2_with_one_line(recipe, tmp_path, capsys):
    assert train(recipe, tmp_path / "run", 'training.objective="L_simple"') == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a discrete DDPM's objective" in err and not (tmp_path / "run").exists()


def test_a_discrete_config_has_no_noise_and_a_continuous_one_resolves_its_time_sampling(tmp_path):
    discrete = load_recipe(ROOT / "recipes" / "tiny.toml").to_dict()
    assert "noise" not in discrete and "time_sampling" not in discrete["training"]
    assert list(discrete) == ["model", "diffusion", "training", "evaluation"]
    cfg = load_recipe(ROOT / "recipes" / "tiny_continuous.toml", ['training.time_sampling=""'])
    d = cfg.to_dict()
    assert cfg.continuous and d["training"]["time_sampling"] == "low-discrepancy"
    assert d["noise"] == {"noise_input": "t", "prediction": "eps", "schedule": "vdm-linear", "time_scale": 1000.0,
                          "gamma_min": -13.3, "gamma_max": 5.0}
    (tmp_path / "config.json").write_text(json.dumps(d))  # a run's config.json reads back as the same config
    assert load_recipe(tmp_path / "config.json").to_dict() == d
    packaged = load_recipe(ROOT / "recipes" / "embedded_continuous.toml")
    assert packaged.to_dict()["model"] == load_recipe(ROOT / "recipes" / "embedded.toml").to_dict()["model"]
    assert packaged.noise.time_scale == 1000 and packaged.training.objective == "vdm"


def test_low_discrepancy_times_cover_every_stratum_once_and_depend_on_the_step_only():
    from ddpm_bench.training import step_randomness

    draw = lambda step, sampling: step_randomness(0, step, 16, 100, 1000, (3, 4, 4), True, None, sampling)  # noqa: E731
    a = draw(5, "low-discrepancy")
    assert a.i is None and a.u.dtype == torch.float64
    strata = torch.floor(a.u * 16).long()
    assert sorted(strata.tolist()) == list(range(16))  # one t in each [k / B, (k + 1) / B)
    assert torch.equal(a.u, draw(5, "low-discrepancy").u) and not torch.equal(a.u, draw(6, "low-discrepancy").u)
    u = draw(5, "uniform").u
    assert ((u >= 0) & (u < 1)).all() and sorted(torch.floor(u * 16).long().tolist()) != list(range(16))


def test_it_trains_and_a_stopped_and_resumed_run_equals_an_uninterrupted_one(recipe, tmp_path, capsys):
    assert train(recipe, tmp_path / "straight") == 0
    assert train(recipe, tmp_path / "resumed", "training.steps=3") == 0
    assert train(recipe, tmp_path / "resumed") == 0
    a = ckpt(tmp_path / "straight" / "checkpoints" / "ckpt_0000006.pt")
    b = ckpt(tmp_path / "resumed" / "checkpoints" / "ckpt_0000006.pt")
    for key in ("model", "ema", "optimizer"):
        assert_same_state(a[key], b[key])
    assert not torch.equal(a["model"]["conv_out.weight"], a["ema"]["conv_out.weight"])  # it did train
    rows = [r.split(",") for r in (tmp_path / "resumed" / "log.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    # bits/dim of VDM's loss: about 0.5 * 18.3 / ln 2 = 13.2 for an untrained network (eps_hat near 0)
    assert all(np.isfinite(losses)) and all(5.0 < v < 20.0 for v in losses), losses
    assert a["config"]["noise"]["noise_input"] == "t" and a["config"]["training"]["time_sampling"] == "low-discrepancy"


def test_uniform_times_train_another_run(recipe, tmp_path):
    assert train(recipe, tmp_path / "ld", "training.steps=2") == 0
    assert train(recipe, tmp_path / "u", "training.steps=2", 'training.time_sampling="uniform"') == 0
    a = ckpt(tmp_path / "ld" / "checkpoints" / "ckpt_0000002.pt")["model"]
    b = ckpt(tmp_path / "u" / "checkpoints" / "ckpt_0000002.pt")["model"]
    assert not torch.equal(a["conv_out.weight"], b["conv_out.weight"])


def test_the_network_is_called_with_t_times_time_scale(recipe):
    """t = t_min + (t_max - t_min) u on vdm-linear, and the network sees t * 1000 (NoiseConvention.network_input)."""
    from ddpm_bench.data import load_images
    from ddpm_bench.training import Trainer, step_randomness

    cfg = load_recipe(recipe)
    images = torch.from_numpy(load_images(cfg.training.data, None, None).images).permute(0, 3, 1, 2).contiguous()
    trainer = Trainer(cfg, images, cfg.diffusion.schedule(), torch.device("cpu"))
    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    trainer.train_step()
    u = step_randomness(0, 0, 4, 10, 20, (3, 8, 8), True, None, "low-discrepancy").u
    torch.testing.assert_close(seen[0], 1000 * u, rtol=1e-12, atol=1e-9)


def test_the_checkpoint_carries_the_convention_into_the_models_identity(recipe, tmp_path, capsys):
    from ddpm_bench.identity import model_identity, state_dict_sha256

    run = tmp_path / "run"
    assert train(recipe, run, "training.steps=2", "training.ckpt_every=2") == 0
    path = run / "checkpoints" / "ckpt_0000002.pt"
    net = load_model(path, device="cpu")
    conv = net.model.convention
    assert conv.noise_input == "t" and conv.schedule == "vdm-linear" and conv.time_scale == 1000.0
    assert net.model.identity.architecture["noise"] == conv.to_dict()
    c = ckpt(path)
    discrete = model_identity("ckpt", "ema", state_dict_sha256(c["ema"]), net.model.diffusion, c["config"]["model"], "")
    assert discrete.weights_sha256 == net.model.identity.weights_sha256 and discrete.sha256 != net.model.identity.sha256
    capsys.readouterr()
    assert main(["inspect", "--ckpt", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_identity"]["ema"] == net.model.identity.sha256 and info["config"]["noise"] == conv.to_dict()


def test_two_processes_share_one_global_batch_of_times(recipe):
    """Under torchrun rank r of W takes rows [r B/W, (r+1) B/W) of the global batch and its times: the mean of
    the two ranks' gradients (what DistributedDataParallel all-reduces) is the gradient of one process."""
    from dataclasses import replace

    from ddpm_bench.data import load_images
    from ddpm_bench.training import Trainer

    cfg = load_recipe(recipe, ["model.dropout=0.0", "training.grad_clip=0"])
    images = torch.from_numpy(load_images(cfg.training.data, None, None).images).permute(0, 3, 1, 2).contiguous()

    def grads(rank, world):
        trainer = Trainer(replace(cfg), images, cfg.diffusion.schedule(), torch.device("cpu"), rank, world)
        loss, _, _ = trainer.train_step()
        return [p.grad.clone() for p in trainer.model.parameters()], float(loss)

    (one, loss), (g0, l0), (g1, l1) = grads(0, 1), grads(0, 2), grads(1, 2)
    assert loss == pytest.approx((l0 + l1) / 2, rel=1e-6) and l0 != l1
    for a, b, c in zip(one, g0, g1, strict=True):
        torch.testing.assert_close((b + c) / 2, a, rtol=1e-4, atol=1e-6)


def test_reproduce_refuses_a_continuous_recipe_in_one_line(tmp_path, capsys):
    assert main(["reproduce", str(ROOT / "recipes" / "tiny_continuous.toml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluates discrete models only" in err and not (tmp_path / "r").exists()
