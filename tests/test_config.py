"""Recipes: TOML loading, --set overrides, unknown keys and bad values rejected with the key named."""

import json
from pathlib import Path

import pytest

from ddpm_bench.config import load_recipe
from ddpm_bench.errors import ConfigError
from ddpm_bench.jobs.train import train_identity
from ddpm_bench.run_dir import differences

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_resolves_to_json(path):
    cfg = load_recipe(path)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    want = 6 if cfg.diffusion.var_type in ("learned", "learned-range") else 3
    assert d["model"]["out_channels"] == want


def test_paper_recipe_has_the_paper_settings():
    cfg = load_recipe(Path(__file__).parents[1] / "recipes" / "cifar10.toml")
    t = cfg.training
    assert (t.lr, t.warmup, t.grad_clip, t.batch_size, t.ema_decay, t.random_flip, t.steps, t.objective) == \
        (2e-4, 5000, 1.0, 128, 0.9999, True, 800_000, "L_simple")
    assert (cfg.diffusion.mean_type, cfg.diffusion.var_type, cfg.model.ch, cfg.model.ch_mult) == \
        ("eps", "fixed-large", 128, (1, 2, 2, 2))


def write(tmp_path, text):
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    p = write(tmp_path, "[training]\nstpes = 3\n")
    with pytest.raises(ConfigError, match=r"training\.stpes") as e:
        load_recipe(p)
    assert str(p) in str(e.value)


def test_unknown_table_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'optimiser'"):
        load_recipe(write(tmp_path, "[optimiser]\nlr = 1\n"))


def test_set_overrides_with_dotted_keys_and_toml_values(tmp_path):
    p = write(tmp_path, "[training]\nsteps = 3\n")
    cfg = load_recipe(p, ["training.steps=200", "training.lr=1e-3", "model.ch_mult=[1, 2]",
                          "training.data=cifar10:train", "training.random_flip=false"])
    assert cfg.training.steps == 200 and cfg.training.lr == 1e-3 and cfg.model.ch_mult == (1, 2)
    assert cfg.training.data == "cifar10:train" and cfg.training.random_flip is False


@pytest.mark.parametrize("item,match", [
    ("training.stpes=1", "training.stpes"),
    ("steps=1", "'steps'"),
    ("training.steps=1.5", "training.steps"),
    ("training.steps=0", "training.steps"),
    ("training.objective=L_hybrid", "objective"),
    ("diffusion.var_type=huge", "variance type"),
    ("diffusion.beta_schedule=zigzag", "zigzag"),
    ("training.random_flip=yes", "random_flip"),
])
def test_bad_overrides_are_config_errors(tmp_path, item, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(write(tmp_path, ""), [item])


def test_learned_variance_needs_the_bound_objective(tmp_path):
    with pytest.raises(ConfigError, match="objective = 'L'"):
        load_recipe(write(tmp_path, '[diffusion]\nvar_type = "learned"\n'))
    cfg = load_recipe(write(tmp_path, '[diffusion]\nvar_type = "learned"\n[training]\nobjective = "L"\n'))
    assert cfg.model.out_channels == 6


def test_out_channels_contradicting_the_variance_type_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="out_channels"):
        load_recipe(write(tmp_path, "[model]\nout_channels = 6\n"))


def test_the_training_identity_leaves_out_resumable_keys(tmp_path):
    a = load_recipe(write(tmp_path, "")).to_dict()
    b = load_recipe(write(tmp_path, ""), ["training.steps=5", "training.lr=0.1", "evaluation.nll.draws=2"]).to_dict()
    assert [d.split(":")[0] for d in differences(a, b)] == ["evaluation.nll.draws", "training.lr", "training.steps"]
    assert differences(train_identity(a), train_identity(b)) == ["training.lr: 0.0002 -> 0.1"]


@pytest.mark.parametrize("name", ["lsun_bedroom256", "lsun_cat256", "lsun_church256", "celebahq256"])
def test_256_recipes_use_the_posterior_variance_as_the_official_scripts(name):
    # run_lsun.py / run_celebahq.py build diffusion_utils.GaussianDiffusion: the reverse process has the
    # posterior variance (fixed-small); only the CIFAR-10 script uses diffusion_utils_2's fixed-large
    cfg = load_recipe(f"recipes/{name}.toml")
    assert cfg.diffusion.var_type == "fixed-small" and cfg.diffusion.mean_type == "eps"
    assert load_recipe("recipes/cifar10.toml").diffusion.var_type == "fixed-large"
