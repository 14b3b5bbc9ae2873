"""The Python API (`import ddpm_bench`) against the command line: the same inputs give the same bits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm_bench
from ddpm_bench.cli import main
from ddpm_bench.data import load_images
from tests.plugins import TinyConv

ROOT = Path(__file__).resolve().parents[1]


def per_image(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "per_image.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def exact_cli(tmp_path_factory):
    """The exact bound of the packaged model on the first test image, from the command line."""
    out = tmp_path_factory.mktemp("api") / "exact"
    assert main(["nll", "--ckpt", "embedded", "--data", "embedded:test", "--num-images", "1", "--no-progress",
                 "--out", str(out)]) == 0
    return out


def test_exact_bound_of_the_packaged_model_is_the_commands_to_the_bit(exact_cli):
    """From uint8 images in memory (NHWC, as on disk), keyed by their data-set index."""
    images = load_images("embedded:test", None, 1).images
    result = ddpm_bench.bound("embedded", images)
    cli = per_image(exact_cli)
    assert np.array_equal(result.per_image.terms, cli["terms"]) and np.array_equal(result.per_image.mse, cli["mse"])
    summary = json.loads((exact_cli / "summary.json").read_text())
    assert result.summary.total_bpd == summary["total_bpd"]
    assert result.summary.run_id == summary["run_id"]  # the same images by content: the same run
    assert result.summary.model_sha256 == summary["model"]["identity"]["sha256"]
    assert result.path is None and result.per_image.totals.shape == (1,)


def test_importance_bound_is_the_commands_to_the_bit(exact_cli, tmp_path):
    out = tmp_path / "is"
    assert main(["nll", "--ckpt", "embedded", "--data", "embedded:test", "--num-images", "8", "--terms", "5",
                 "--proposal", str(exact_cli), "--no-progress", "--out", str(out)]) == 0
    result = ddpm_bench.bound(ddpm_bench.load_model("embedded"), "embedded:test", num_images=8, terms=5,
                              proposal=exact_cli)
    cli = per_image(out)
    assert np.array_equal(result.per_image.terms, cli["terms"]) and np.array_equal(result.per_image.drawn, cli["drawn"])
    summary = json.loads((out / "summary.json").read_text())
    assert result.summary.run_id == summary["run_id"]  # same inputs, same run: its identity too
    assert result.summary.total_bpd_stderr == summary["total_bpd_stderr"]
    assert result.summary.estimator == "importance" and result.summary.terms_per_image == 5


def test_samples_and_their_fid_are_the_commands_to_the_bit(tmp_path):
    out = tmp_path / "samples"
    assert main(["sample", "--ckpt", "embedded", "--num", "3", "--steps", "5", "--no-progress", "--out", str(out)]) == 0
    result = ddpm_bench.sample("embedded", 3, steps=5)
    assert np.array_equal(result.samples, load_images(str(out), None, None).images)
    assert result.manifest.run_id == json.loads((out / "manifest.json").read_text())["run_id"]
    fid_out = tmp_path / "fid"
    flags = ["--feature-extractor", "tiny-test", "--num-ref", "20", "--allow-few-samples", "--no-prc",
             "--cache-dir", str(tmp_path / "cache")]
    assert main(["fid", "--samples", str(out), "--ref", "embedded:test", *flags, "--no-progress",
                 "--out", str(fid_out)]) == 0
    metrics = ddpm_bench.fid(result, "embedded:test", feature_extractor="tiny-test", num_ref=20,
                             allow_few_samples=True, prc=False, cache_dir=str(tmp_path / "cache2"))
    assert metrics.fid == json.loads((fid_out / "metrics.json").read_text())["fid"]


def test_an_in_memory_module_is_a_plugin_by_its_weights(tmp_path):
    """A torch module in memory gives the bits of the same module as a --model plug-in; its identity is its
    weights and code."""
    npz = tmp_path / "d.npz"
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.savez(npz, images)
    out = tmp_path / "cli"
    assert main(["nll", "--model", "tests/plugins.py:tiny_conv_T20", "--T", "20", "--data", str(npz),
                 "--no-progress", "--out", str(out)]) == 0
    torch.manual_seed(0)
    module = TinyConv(T=20).eval()
    result = ddpm_bench.bound(ddpm_bench.load_model(module, diffusion={"T": 20}), torch.from_numpy(images).permute(0, 3, 1, 2))
    assert np.array_equal(result.per_image.terms, per_image(out)["terms"])
    ident = result.summary.model["identity"]
    assert ident["weights_sha256"] and ident["architecture"]["callable"] == "TinyConv" and ident["strong"]


def test_a_diffusers_unet_in_memory_with_its_scheduler(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=10, variance_type="fixed_large")
    unet.save_pretrained(tmp_path / "m" / "unet")
    scheduler.save_pretrained(tmp_path / "m" / "scheduler")
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images)
    out = tmp_path / "cli"
    assert main(["nll", "--ckpt", str(tmp_path / "m"), "--data", str(tmp_path / "d.npz"), "--no-progress",
                 "--out", str(out)]) == 0
    model = ddpm_bench.load_model(unet, scheduler=scheduler)
    assert model.diffusion.T == 10 and model.diffusion.var_type == "fixed-large"
    result = ddpm_bench.bound(model, images)
    assert np.array_equal(result.per_image.terms, per_image(out)["terms"])
    cli_ident = json.loads((out / "summary.json").read_text())["model"]["identity"]
    assert result.summary.model["identity"]["sha256"] == cli_ident["sha256"]  # identity by content, not path


def test_results_convert_to_and_from_the_output_files(exact_cli, tmp_path):
    result = ddpm_bench.read_output(exact_cli)
    result.write(tmp_path / "copy")
    again = ddpm_bench.read_output(tmp_path / "copy")
    assert again.summary == result.summary and np.array_equal(again.per_image.terms, result.per_image.terms)
    curve = ddpm_bench.rate_distortion(again)
    assert curve.T == 1000 and curve.rate_bpd[-1] == pytest.approx(result.summary.rate_bpd, rel=1e-12)


def test_bad_input_to_the_api_is_one_user_error():
    with pytest.raises(ddpm_bench.api.UserError, match="uint8"):
        ddpm_bench.bound("embedded", np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ddpm_bench.api.UserError, match="proposal= goes with terms="):
        ddpm_bench.bound("embedded", "embedded:test", proposal="x")


def python_blocks(markdown: str) -> list[tuple[str, str | None]]:
    """(code, the `text` block right after it or None) of every python block."""
    return [(code, text or None) for code, text in
            re.findall(r"```python\n(.*?)```\n(?:\n[^`]*?)?(?:```text\n(.*?)```)?", markdown, flags=re.S)]


NUMBER = re.compile(r"[0-9a-f]{12}|[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def shape_of(text: str) -> list[str]:
    """Lines with every number and short hash as #: what must match exactly is everything else."""
    return [NUMBER.sub("#", line.rstrip()) for line in text.strip().splitlines()]


def test_the_docs_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/api.md's notebook: every python block, in order, in one namespace; each block's printed output
    is the `text` block after it, word for word, its numbers aside (timings and the network's float32
    rounding depend on the machine: the text shows them as they were)."""
    monkeypatch.chdir(tmp_path)
    doc = (ROOT / "docs" / "api.md").read_text()
    blocks = python_blocks(doc)
    assert len(blocks) >= 6 and sum(text is not None for _, text in blocks) >= 6
    namespace: dict = {}
    for code, text in blocks:
        capsys.readouterr()
        exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - the documentation's own code
        out = capsys.readouterr().out
        if text is not None:
            assert shape_of(out) == shape_of(text), out
