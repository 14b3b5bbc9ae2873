"""Issue 28, causes 1-4: the content check cannot be switched off by deleting it; a summary agrees with the
per-image file it summarises; a diffusers directory's scheduler config and UNet config are read in one line
or refused; a training step's checkpoint and its eval.csv row are one unit, and eval.csv is checked."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm_bench
from ddpm_bench.cli import main
from ddpm_bench.errors import UserError
from ddpm_bench.outputs import OutputFileError
from ddpm_bench.shards import CONTENT, json_sha256
from tests.stderr import without_schedule_warning

TINY = "tests/plugins.py:tiny_conv_T20"
FRACTIONAL = "tests/plugins.py:tiny_conv_T20_fractional"
MISSING = "field 'content_sha256' is missing"


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    return path


def nll(npz, out, *extra, ode: bool = False):
    model = FRACTIONAL if ode else TINY
    return main(["nll", "--model", model, "--T", "20", "--data", str(npz), "--no-progress", "--shard-size", "2",
                 "--out", str(out), *(["--ode"] if ode else []), *map(str, extra)])


def err_lines(capsys) -> list[str]:
    return without_schedule_warning(capsys.readouterr().err).strip().splitlines()


def one_error(capsys) -> str:
    """The one line a refusal printed (warnings aside)."""
    lines = [line for line in err_lines(capsys) if "warning" not in line]
    assert len(lines) == 1, lines
    return lines[0]


def edit(path: Path, rehash: bool, **changes) -> None:
    """Change fields of a JSON output: with `rehash`, its content hash computed again (a hash is no
    signature); without, the hash deleted with them (`_DELETE` values delete a key)."""
    obj = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            obj.pop(key, None)
        else:
            obj[key] = value
    if rehash:
        obj[CONTENT] = json_sha256(obj)
    else:
        obj.pop(CONTENT)
    path.write_text(json.dumps(obj, indent=2))


_DELETE = object()


def total(out: Path) -> float:
    return json.loads((out / "summary.json").read_text())["total_bpd"]


# -- 1. the content check cannot be switched off by deleting it ------------------------------------------------

@pytest.mark.parametrize("ode", [False, True], ids=["bound", "ode"])
def test_a_summary_whose_content_check_was_deleted_is_refused_and_the_rerun_restores_it(npz, tmp_path, capsys, ode):
    out = tmp_path / "nll"
    assert nll(npz, out, ode=ode) == 0
    right = total(out)
    edit(out / "summary.json", rehash=False, total_bpd=1.234)
    with pytest.raises(OutputFileError, match=f"summary.json: {MISSING}"):
        ddpm_bench.read_output(out)
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 2
    assert f"{out / 'summary.json'}: {MISSING}" in one_error(capsys)
    assert nll(npz, out, ode=ode) == 0  # not "complete": merged again from its checked shards
    assert MISSING in capsys.readouterr().err
    assert total(out) == right


def test_metrics_whose_content_check_was_deleted_are_recomputed_and_not_reported(tmp_path, capsys):
    images = tmp_path / "i.npz"
    np.savez(images, np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    out = tmp_path / "f"
    args = ["fid", "--samples", str(images), "--ref", str(images), "--feature-extractor", "tiny-test", "--num-ref",
            "30", "--allow-few-samples", "--no-prc", "--cache-dir", str(tmp_path / "c"), "--shard-size", "10",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    right = json.loads((out / "metrics.json").read_text())["fid"]
    edit(out / "metrics.json", rehash=False, fid=0.5)
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 2
    assert f"{out / 'metrics.json'}: {MISSING}" in one_error(capsys)
    assert main(args) == 0  # recomputed, not "complete for these settings"
    assert MISSING in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["fid"] == pytest.approx(right, rel=1e-12)


def test_per_image_terms_changed_with_files_and_content_check_deleted_are_refused_by_gap_and_rate_distortion(
        npz, tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, np.random.default_rng(5).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    train, test = tmp_path / "a", tmp_path / "b"
    assert nll(npz, train) == 0 and nll(other, test) == 0
    with np.load(test / "per_image.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["terms"] = arrays["terms"] * 2
    np.savez(test / "per_image.npz", **arrays)
    edit(test / "summary.json", rehash=False, files=_DELETE)
    capsys.readouterr()
    assert main(["gap", str(train), str(test)]) == 2
    assert f"{test / 'summary.json'}: {MISSING}" in one_error(capsys)
    assert main(["rate-distortion", str(test), "--out", str(tmp_path / "rd")]) == 2
    assert f"{test / 'summary.json'}: {MISSING}" in one_error(capsys)
    assert not (tmp_path / "rd").exists()


def test_an_output_of_0_2_is_recognised_by_its_version_not_by_a_missing_key(npz, tmp_path):
    out = tmp_path / "o"
    assert nll(npz, out) == 0
    obj = json.loads((out / "summary.json").read_text())
    for key in ("content_sha256", "files", "quantity"):  # what 0.2 did not write
        obj.pop(key)
    (out / "summary.json").write_text(json.dumps({**obj, "ddpm_bench_version": "0.1.0"}))  # 0.2 called itself so
    assert ddpm_bench.read_output(out).summary.files == {}
    (out / "summary.json").write_text(json.dumps(obj))  # the same keys, written by 0.3: its check was deleted
    with pytest.raises(OutputFileError, match=MISSING):
        ddpm_bench.read_output(out)
    (out / "summary.json").write_text(json.dumps({**obj, "ddpm_bench_version": "0.1.0", "quantity": "bound"}))
    with pytest.raises(OutputFileError, match=MISSING):  # a field of 0.3: no file of 0.2
        ddpm_bench.read_output(out)


def test_a_summary_that_no_longer_records_its_per_image_file_is_refused(npz, tmp_path):
    out = tmp_path / "o"
    assert nll(npz, out) == 0
    edit(out / "summary.json", rehash=True, files={})
    with pytest.raises(OutputFileError, match="summary.json: field 'files' does not record per_image.npz"):
        ddpm_bench.read_output(out)


def test_a_rate_distortion_output_is_read_with_its_content_check_and_its_curve_checked(npz, tmp_path, capsys):
    out, rd = tmp_path / "nll", tmp_path / "rd"
    assert nll(npz, out) == 0
    assert main(["rate-distortion", str(out), "--out", str(rd)]) == 0
    curve = (rd / "curve.csv").read_text()
    (rd / "curve.csv").write_text(curve.replace("\n2", "\n3", 1))
    capsys.readouterr()
    assert main(["report", str(rd), "--out", str(tmp_path / "r1")]) == 2
    assert f"{rd / 'curve.csv'}: its content is not what was written" in one_error(capsys)
    (rd / "curve.csv").write_text(curve)
    edit(rd / "summary.json", rehash=False, rate_bpd=0.5)
    assert main(["report", str(rd), "--out", str(tmp_path / "r2")]) == 2
    assert f"{rd / 'summary.json'}: {MISSING}" in one_error(capsys)


def test_a_gap_json_is_read_with_its_content_check_and_one_of_0_2_as_it_is(npz, tmp_path):
    from ddpm_bench.outputs import GapResult

    other = tmp_path / "other.npz"
    np.savez(other, np.random.default_rng(5).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    assert nll(npz, tmp_path / "a") == 0 and nll(other, tmp_path / "b") == 0
    g = tmp_path / "g"
    g.mkdir()
    assert main(["gap", str(tmp_path / "a"), str(tmp_path / "b"), "--max-gap", "100", "--out", str(g / "gap.json")]) == 0
    assert GapResult.read(g).splits and GapResult.read(g).verdict == "below"
    obj = json.loads((g / "gap.json").read_text())
    edit(g / "gap.json", rehash=False, gap_bpd=-9.0)
    with pytest.raises(OutputFileError, match=f"gap.json: {MISSING}"):
        GapResult.read(g)
    del obj["splits"], obj["verdict"], obj[CONTENT]  # as 0.2 wrote it: no splits, no verdict, no content hash
    (g / "gap.json").write_text(json.dumps(obj))
    old = GapResult.read(g)
    assert old.gap_bpd == obj["gap_bpd"] and old.verdict == "below"  # the verdict follows from its numbers


# -- 2. a summary agrees with the per-image file it summarises ------------------------------------------------

@pytest.mark.parametrize("ode", [False, True], ids=["bound", "ode"])
def test_a_summary_edited_with_its_hash_recomputed_disagrees_with_its_per_image_file(npz, tmp_path, capsys, ode):
    out = tmp_path / "nll"
    assert nll(npz, out, ode=ode) == 0
    right = total(out)
    edit(out / "summary.json", rehash=True, total_bpd=1.234)
    message = (f"{out / 'summary.json'}: field 'total_bpd' is 1.234, but the mean over the images of "
               f"{out / 'per_image.npz'} is {right!r}")
    with pytest.raises(OutputFileError) as e:
        ddpm_bench.read_output(out)
    assert message in str(e.value)
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 2
    assert message in one_error(capsys)
    assert nll(npz, out, ode=ode) == 0
    assert message in capsys.readouterr().err
    assert total(out) == right


@pytest.mark.parametrize("ode, part", [(False, "kl_bpd"), (False, "decoder_bpd"), (True, "divergence_bpd")])
def test_each_named_part_of_a_summary_is_checked_against_its_per_image_file(npz, tmp_path, ode, part):
    out = tmp_path / "nll"
    assert nll(npz, out, ode=ode) == 0
    obj = json.loads((out / "summary.json").read_text())
    edit(out / "summary.json", rehash=True, **{part: obj[part] + 1e-6})
    with pytest.raises(OutputFileError, match=f"field '{part}' is .*, but the mean over the images of"):
        ddpm_bench.read_output(out)


# -- 3. diffusers scheduler configs and UNet configs ------------------------------------------------------------

def unet_dir(root: Path, scheduler: bool = True, T: int = 20) -> Path:
    """A tiny UNet2DModel with (optionally) a DDPMScheduler of T steps, as a pipeline folder."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained(root / "unet")
    if scheduler:
        diffusers.DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large").save_pretrained(root / "scheduler")
    return root


def data(tmp_path: Path) -> Path:
    path = tmp_path / "d.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("content, message", [
    (b'\xff\xfe{"num_train_timesteps": 20}', "not UTF-8 text (byte 0)"),
    (b"[1, 2, 3]", "a JSON list, not a scheduler config"),
    (b'{"num_train_timesteps": [20]}', "num_train_timesteps is [20], not an integer"),
    (b'{"beta_schedule": ["linear"]}', "beta_schedule ['linear'] is not supported"),
])
def test_a_scheduler_config_that_is_no_json_object_is_one_line(tmp_path, capsys, content, message):
    d = unet_dir(tmp_path / "m")
    config = d / "scheduler" / "scheduler_config.json"
    config.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(message)):
        ddpm_bench.load_model(d)
    capsys.readouterr()
    assert main(["nll", "--ckpt", str(d), "--data", str(data(tmp_path)), "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    line = one_error(capsys)
    assert str(config) in line and message in line


def test_a_directory_without_a_scheduler_config_is_refused_unless_its_schedule_is_given(tmp_path, capsys):
    d = unet_dir(tmp_path / "m", scheduler=False)
    capsys.readouterr()
    assert main(["nll", "--ckpt", str(d), "--data", str(data(tmp_path)), "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    line = one_error(capsys)
    assert "no scheduler_config.json" in line and "noise schedule is unknown" in line and "--T" in line
    assert main(["nll", "--ckpt", str(d), "--data", str(data(tmp_path)), "--T", "20", "--no-progress",
                 "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["T"] == 20


def hub(tmp_path: Path, monkeypatch) -> Path:
    """A Hugging Face cache holding org/tiny-ddpm (tests/test_model_formats.py's layout), read offline."""
    from tests.test_model_formats import hub_cache

    snap = hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snap


def test_a_hub_snapshot_without_a_scheduler_config_is_refused(tmp_path, monkeypatch, capsys):
    snap = hub(tmp_path, monkeypatch)
    (snap / "scheduler" / "scheduler_config.json").unlink()
    capsys.readouterr()
    assert main(["nll", "--ckpt", "hf:org/tiny-ddpm", "--data", str(data(tmp_path)), "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    line = one_error(capsys)
    assert line.startswith("ddpm-bench") and "hf:org/tiny-ddpm: no scheduler_config.json" in line


@pytest.mark.parametrize("change, message", [
    ({"block_out_channels": [16, 32]}, "113 of its tensors have other shapes than the config makes (first: "
                                       "conv_in.bias (8,) in the weights, (16,) by the config)"),
    ({"down_block_types": ["DownBlock2D", "AttnDownBlock2D"]}, "10 tensors the config makes are not in the weights"),
])
def test_a_hub_unet_config_that_disagrees_with_its_weights_is_one_line(tmp_path, monkeypatch, capsys, change,
                                                                      message):
    snap = hub(tmp_path, monkeypatch)
    config = snap / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    capsys.readouterr()
    assert main(["nll", "--ckpt", "hf:org/tiny-ddpm", "--data", str(data(tmp_path)), "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    line = one_error(capsys)
    assert f"{config} does not describe its weights" in line and message in line


# -- 4. [training.eval]: a step's checkpoint and its row are one unit; eval.csv is checked ---------------------

def trained(tmp_path: Path, name: str, *extra: str) -> tuple[Path, list[str], Callable[..., int]]:
    from tests.test_train import TINY as RECIPE

    rng = np.random.default_rng(0)
    d, held_out = tmp_path / "d.npz", tmp_path / "h.npz"
    if not d.exists():
        np.savez(d, rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
        np.savez(held_out, rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
        (tmp_path / "r.toml").write_text(RECIPE.format(data=d))
    sets = ["training.steps=4", "training.ckpt_every=2", "training.keep_last=5", "training.eval.every=2",
            f"training.eval.data={held_out}", "training.eval.images=3", "training.eval.terms=2", *extra]

    def train(*more: str) -> int:
        argv = ["train", "--recipe", str(tmp_path / "r.toml"), "--out", str(tmp_path / name), "--no-progress",
                "--device", "cpu"]
        for s in (*sets, *more):
            argv += ["--set", s]
        return main(argv)

    return tmp_path / name, sets, train


def rows(run: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["bpd"]) for r in csv.DictReader(open(run / "eval.csv"))}


@pytest.fixture
def straight(tmp_path):
    """eval.csv of a run that was never stopped."""
    run, _, train = trained(tmp_path, "straight")
    assert train() == 0
    return rows(run)


@pytest.mark.parametrize("killed_at", [2, 4])
def test_a_kill_between_a_checkpoint_and_its_eval_row_is_evaluated_on_resume(tmp_path, monkeypatch, capsys,
                                                                             straight, killed_at):
    import ddpm_bench.jobs.train as train_job

    run, _, train = trained(tmp_path, "killed")
    real = train_job.timed_evaluation

    def killed(bound, trainer):
        if trainer.step == killed_at:  # the checkpoint of this step is written, its row is not
            raise KeyboardInterrupt
        return real(bound, trainer)

    monkeypatch.setattr(train_job, "timed_evaluation", killed)
    assert train() == 130  # interrupted
    assert (run / "checkpoints" / f"ckpt_{killed_at:07d}.pt").is_file() and killed_at not in rows(run)
    monkeypatch.setattr(train_job, "timed_evaluation", real)
    assert train() == 0
    assert rows(run) == straight  # every step's row, the numbers of the run that never stopped


def test_an_edited_eval_row_is_dropped_and_computed_again_from_its_checkpoint(tmp_path, capsys, straight):
    run, _, train = trained(tmp_path, "edited")
    assert train() == 0
    lines = (run / "eval.csv").read_text().splitlines()
    step2 = lines[1].split(",")
    step2[1] = "1.234"
    (run / "eval.csv").write_text("\n".join([lines[0], ",".join(step2), *lines[2:]]) + "\n")
    capsys.readouterr()
    assert train("training.steps=6") == 0  # extending the run
    assert "eval.csv: dropped rows that are cut off, not a log row or changed since" in capsys.readouterr().err
    got = rows(run)
    assert got[2] == straight[2] and got[4] == straight[4] and sorted(got) == [2, 4, 6]


def test_an_eval_row_cut_mid_field_is_dropped_and_computed_again(tmp_path, capsys, straight):
    from ddpm_bench.step_log import row_step

    run, _, train = trained(tmp_path, "cut")
    assert train() == 0
    text = (run / "eval.csv").read_text()
    (run / "eval.csv").write_text(text[:-2])  # a kill in the last write: the last row lost its end
    capsys.readouterr()
    assert train() == 0
    assert "eval.csv: dropped rows that are cut off" in capsys.readouterr().err
    lines = (run / "eval.csv").read_text().splitlines()
    assert all(row_step(r, len(lines[0].split(",")), hashed=True) is not None for r in lines[1:])  # whole again
    assert rows(run) == straight
