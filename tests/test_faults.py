"""The last fault classes: what was written is verified, plug-ins cannot end a command as a success, a model
is identified by what it computes, reruns restore, training continues only from its own, estimates are never
read as exact terms, and the inputs that ended in a traceback end in one line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_bench.cli import main
from ddpm_bench.messages import DdpmBenchWarning
from tests.stderr import without_schedule_warning
from tests.test_errors import PLUGINS, REPO, one_line

TINY = "tests/plugins.py:tiny_conv_T20"


def run(*args, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ddpm_bench", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO)


def last_line(p: subprocess.CompletedProcess) -> str:
    """The last line on stderr, with no traceback before it."""
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    return p.stderr.strip().splitlines()[-1]


def tiny_recipe(tmp_path: Path, data: Path) -> Path:
    from tests.test_train import TINY as RECIPE

    path = tmp_path / f"{data.stem}.toml"
    path.write_text(RECIPE.format(data=data))
    return path


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    return path


@pytest.fixture
def two(tmp_path, npz):
    """Two finished nll outputs of one model on two different image sets (a train and a test)."""
    other = tmp_path / "other.npz"
    np.savez(other, np.random.default_rng(5).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    assert nll(npz, tmp_path / "a") == 0 and nll(other, tmp_path / "b") == 0
    return tmp_path / "a", tmp_path / "b"


def nll(npz, out, *extra):
    return main(["nll", "--model", TINY, "--T", "20", "--data", str(npz), "--no-progress", "--shard-size", "2",
                 "--out", str(out), *map(str, extra)])


def sample(out, *extra):
    return main(["sample", "--model", TINY, "--T", "20", "--image-size", "8", "--num", "6", "--shard-size", "3",
                 "--progressive-every", "5", "--no-progress", "--out", str(out), *map(str, extra)])


def err_line(capsys) -> str:
    lines = without_schedule_warning(capsys.readouterr().err).strip().splitlines()
    assert len(lines) >= 1
    return lines[-1]


def edit_json(path: Path, key: str, value) -> None:
    obj = json.loads(path.read_text())
    obj[key] = value
    path.write_text(json.dumps(obj, indent=2))


# -- 1. what was written is verified, not trusted -----------------------------------------------------------------

def test_an_edited_number_in_a_finished_summary_is_caught_and_the_rerun_restores_it(npz, tmp_path, capsys):
    out = tmp_path / "nll"
    assert nll(npz, out) == 0
    right = json.loads((out / "summary.json").read_text())["total_bpd"]
    edit_json(out / "summary.json", "total_bpd", right - 9.0)
    capsys.readouterr()
    assert main(["gap", str(out), str(out)]) == 2  # every reader checks it
    assert "summary.json: its content is not what was written" in err_line(capsys)
    assert nll(npz, out) == 0  # the same command: not "already complete", merged again from the checked shards
    assert "summary.json: its content is not what was written" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["total_bpd"] == right


@pytest.mark.parametrize("name", ["per_image.npz", "terms.csv"])
def test_a_replaced_per_image_file_is_named_by_every_reader(two, tmp_path, capsys, name):
    train, test = two
    path = test / name
    if name == "per_image.npz":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["terms"] = arrays["terms"] + 9.0  # other values, the same run_id
        np.savez(path, **arrays)
    else:
        path.write_text(path.read_text().replace("0,", "0,1", 1))
    capsys.readouterr()
    assert main(["gap", str(train), str(test)]) == 2
    line = err_line(capsys)
    assert f"{path}: its content is not what was written" in line
    assert main(["rate-distortion", str(test), "--out", str(tmp_path / "rd")]) == 2


def test_a_sample_shard_rewritten_with_the_same_run_id_is_refused_and_resampled(tmp_path, capsys):
    out = tmp_path / "s"
    assert sample(out) == 0
    shard = out / "samples_000001.npz"
    with np.load(shard) as z:
        arrays = {k: z[k] for k in z.files}
    original = arrays["arr_0"].copy()
    arrays["arr_0"] = 255 - arrays["arr_0"]
    np.savez(shard, **arrays)  # its run_id, index and old content hash kept
    capsys.readouterr()
    assert main(["fid", "--samples", str(out), "--ref", str(out), "--feature-extractor", "tiny-test",
                 "--allow-few-samples", "--no-progress", "--out", str(tmp_path / "f")]) == 2
    assert "samples_000001.npz: its content is not what was written" in err_line(capsys)
    assert sample(out) == 0  # the rerun samples it again
    with np.load(shard) as z:
        assert np.array_equal(z["arr_0"], original)


@pytest.mark.parametrize("name", ["grid.png", "progressive.npz", "progressive.png"])
def test_a_replaced_or_deleted_sample_figure_is_written_again(tmp_path, capsys, name):
    out = tmp_path / "s"
    assert sample(out) == 0
    before = (out / name).read_bytes()
    (out / name).write_bytes(b"something else")
    assert sample(out) == 0
    assert (out / name).read_bytes() == before
    (out / name).unlink()
    capsys.readouterr()
    assert sample(out) == 0
    assert (out / name).read_bytes() == before and "already complete" not in capsys.readouterr().err


def test_an_edited_fid_and_a_scaled_feature_shard_are_not_trusted(tmp_path, capsys):
    images = tmp_path / "i.npz"
    np.savez(images, np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    out = tmp_path / "f"
    args = ["fid", "--samples", str(images), "--ref", str(images), "--feature-extractor", "tiny-test", "--num-ref",
            "30", "--allow-few-samples", "--no-prc", "--cache-dir", str(tmp_path / "c"), "--shard-size", "10",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    right = json.loads((out / "metrics.json").read_text())["fid"]
    edit_json(out / "metrics.json", "fid", 0.5)
    assert main(args) == 0  # recomputed, not "complete for these settings"
    assert json.loads((out / "metrics.json").read_text())["fid"] == pytest.approx(right, rel=1e-12)
    # an unfinished run whose feature shard was scaled, its run_id and items right
    from ddpm_bench.metrics import feature_shards

    folder = tmp_path / "shards"
    extract = lambda x: {"f": x.reshape(len(x), -1)[:, :4].astype(np.float32)}  # noqa: E731
    data = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    first = feature_shards.extract_in_shards(data, extract, folder, 10, 5, "x", "run", progress=False).features
    shard = folder / feature_shards.shard_name(1)
    with np.load(shard) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["f"] = arrays["f"] * 2
    np.savez(shard, **arrays)
    with pytest.warns(DdpmBenchWarning, match="its content is not what was written"):
        again = feature_shards.extract_in_shards(data, extract, folder, 10, 5, "x", "run", progress=False)
    assert again.extracted == 10
    assert np.array_equal(again.features["f"], first["f"])


# -- 2. a plug-in cannot end the command as a success ------------------------------------------------------------

@pytest.mark.parametrize("plugin", ["exits_in_factory", "exits_in_forward"])
def test_a_plugin_that_raises_system_exit_is_its_error(tmp_path, npz, plugin):
    p = run("nll", "--model", f"{PLUGINS}:{plugin}", "--T", "10", "--data", npz, "--no-progress",
            "--out", tmp_path / "o")
    assert p.returncode == 1
    line = one_line(p)
    assert f"error in plug-in {PLUGINS}:{plugin}: SystemExit" in line and "error_plugins.py" in line
    assert not (tmp_path / "o" / "summary.json").exists()


def test_a_constructor_missing_an_argument_points_at_the_users_file(tmp_path, npz):
    p = run("nll", "--model", f"{PLUGINS}:NeedsArgument", "--T", "10", "--data", npz, "--out", tmp_path / "o")
    assert p.returncode == 1
    line = one_line(p)
    assert "TypeError" in line and "error_plugins.py:" in line and "ddpm_bench/" not in line


# -- 3. a model's identity covers what it computes ---------------------------------------------------------------

PLUGIN_FILE = '''
import torch
import helper


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, t):
        return helper.compute(x) * self.w


def make():
    return Net()


def weightless():
    scale = float(open(__file__.replace("plugin.py", "scale.txt")).read())
    return lambda x, t: x * scale
'''


def test_a_plugin_whose_code_or_input_changed_is_refused_at_resume(tmp_path, npz, capsys):
    (tmp_path / "plugin.py").write_text(PLUGIN_FILE)
    (tmp_path / "helper.py").write_text("def compute(x):\n    return 0.5 * x\n")
    (tmp_path / "scale.txt").write_text("0.5")
    for name, change in (("make", lambda: (tmp_path / "helper.py").write_text("def compute(x):\n    return -x\n")),
                         ("weightless", lambda: (tmp_path / "scale.txt").write_text("0.25"))):
        out = tmp_path / name
        args = ["nll", "--model", f"{tmp_path / 'plugin.py'}:{name}", "--T", "10", "--data", str(npz), "--no-progress",
                "--shard-size", "2", "--out", str(out)]
        assert run(*args).returncode == 0
        (out / "summary.json").unlink()  # as if killed before the end
        (out / "shards" / "nll_000001.npz").unlink()
        change()
        p = run(*args)
        assert p.returncode == 2, p.stderr
        assert "computes something else than when this run started" in last_line(p)
        assert not (out / "summary.json").exists()


def test_the_fingerprint_of_the_same_model_is_the_same_at_another_thread_count(npz, tmp_path):
    out = tmp_path / "o"
    assert nll(npz, out) == 0
    (out / "summary.json").unlink()
    before = torch.get_num_threads()
    torch.set_num_threads(1 if before > 1 else 2)
    try:
        assert nll(npz, out) == 0
    finally:
        torch.set_num_threads(before)


# -- 4. a rerun always resumes and restores ----------------------------------------------------------------------

def test_a_kill_during_the_very_first_write_does_not_block_the_rerun(npz, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".run.json.k1ll3d00.tmp").write_text('{"format": "ddpm-bench-run/1", "comm')
    assert nll(npz, out) == 0
    assert not list(out.glob(".*.tmp"))


def test_a_stranger_temporary_file_is_never_deleted(npz, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".notes.mine.tmp").write_text("mine")
    assert nll(npz, out) == 2
    assert (out / ".notes.mine.tmp").read_text() == "mine"


# -- 5. training continues only from what belongs to it ----------------------------------------------------------

def test_training_refuses_a_checkpoint_trained_on_other_images_and_survives_a_damaged_log(tmp_path, capsys):
    from tests.test_train import train

    a = tmp_path / "a.npz"
    b = tmp_path / "b.npz"
    np.savez(a, np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    np.savez(b, np.random.default_rng(1).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    recipe_a, recipe_b = tiny_recipe(tmp_path, a), tiny_recipe(tmp_path, b)
    run_a, run_b = tmp_path / "ra", tmp_path / "rb"
    assert train(recipe_a, run_a, "training.steps=2", "training.ckpt_every=1") == 0
    assert train(recipe_b, run_b, "training.steps=2", "training.ckpt_every=1") == 0
    # b's checkpoint in place of a's latest: extending a must not pick it up
    shutil.copy(run_b / "checkpoints" / "ckpt_0000002.pt", run_a / "checkpoints" / "ckpt_0000002.pt")
    capsys.readouterr()
    assert train(recipe_a, run_a, "training.steps=4", "training.ckpt_every=1") == 2
    assert "was trained on other images" in err_line(capsys)
    (run_a / "checkpoints" / "ckpt_0000002.pt").unlink()
    log = run_a / "log.csv"
    log.write_text(log.read_text() + "3,0.5,garb\n\x00\x01 not a row\n")
    assert train(recipe_a, run_a, "training.steps=4", "training.ckpt_every=1") == 0
    rows = log.read_text().splitlines()
    assert rows[0] == "step,loss,grad_norm,lr,steps_per_s" and all(r.split(",")[0].isdigit() for r in rows[1:])


def test_a_training_seed_beyond_64_bits_is_refused(tmp_path, capsys):
    from tests.test_train import train

    data = tmp_path / "a.npz"
    np.savez(data, np.zeros((8, 8, 8, 3), np.uint8))
    assert train(tiny_recipe(tmp_path, data), tmp_path / "r", f"training.seed={2**64}") == 2
    assert "training.seed" in err_line(capsys)


# -- 6. an estimate is never read as exact terms -----------------------------------------------------------------

def test_an_importance_output_that_drew_every_term_is_still_refused_as_terms(npz, tmp_path, capsys):
    out = tmp_path / "is"
    assert nll(npz, out, "--terms", 19) == 0  # K = T - 1: every term happened to be drawn
    assert main(["rate-distortion", str(out), "--out", str(tmp_path / "rd")]) == 2
    assert "need every term" in err_line(capsys)
    assert nll(npz, tmp_path / "is2", "--terms", 5, "--proposal", out) == 2
    assert "not 'exact'" in err_line(capsys)


# -- 7. inputs that ended in a traceback --------------------------------------------------------------------------

LONG = "x" * 300


@pytest.mark.parametrize("where", ["out", "data", "gap-out"])
def test_a_file_name_longer_than_the_file_system_allows_is_one_line(tmp_path, npz, two, where):
    if where == "out":
        p = run("nll", "--model", TINY, "--T", "20", "--data", npz, "--out", tmp_path / LONG)
    elif where == "data":
        p = run("nll", "--model", TINY, "--T", "20", "--data", tmp_path / f"{LONG}.npz", "--out", tmp_path / "o")
    else:
        p = run("gap", *two, "--out", tmp_path / f"{LONG}.json")
    assert p.returncode == 2 and ("too long" in one_line(p) or "no such file" in one_line(p))
    assert ".tmp" not in one_line(p)  # the name given, not a temporary one


def test_gap_out_under_a_regular_file_is_one_line(tmp_path, two):
    (tmp_path / "file").write_text("x")
    p = run("gap", *two, "--out", tmp_path / "file" / "gap.json")
    assert p.returncode == 2 and "not a directory" in one_line(p)


def test_a_plugin_output_on_another_device_is_one_line(tmp_path, npz):
    p = run("nll", "--model", f"{PLUGINS}:output_on_meta", "--T", "10", "--data", npz, "--no-progress",
            "--out", tmp_path / "o")
    assert p.returncode == 2 and "on meta" in one_line(p)


@pytest.mark.parametrize("labels", [7, None])
def test_cifar10_batches_with_labels_that_are_not_a_list(tmp_path, labels):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    p = run("nll", "--model", TINY, "--T", "20", "--data", "cifar10:test", "--data-root", tmp_path,
            "--out", tmp_path / "o", env_extra={"DDPM_BENCH_SKIP_CIFAR_MD5": "1"})
    assert p.returncode == 2 and "b'labels' must be a list" in last_line(p)


def test_a_checkpoint_whose_step_is_a_string(tmp_path, npz):
    from ddpm_bench.checkpoint import load_checkpoint, save_checkpoint
    from tests.test_errors import write_ckpt

    path = write_ckpt(tmp_path / "c.pt", "diffusion", "T", 20)
    ckpt = load_checkpoint(path)
    save_checkpoint(path, {**{k: v for k, v in ckpt.items() if k != "format"}, "step": "ten"})
    p = run("nll", "--ckpt", path, "--data", npz, "--out", tmp_path / "o")
    assert p.returncode == 2 and "'step'" in one_line(p)


def test_npz_of_zero_height_images_and_a_raw_npy_named_npz(tmp_path):
    np.savez(tmp_path / "flat.npz", np.zeros((2, 0, 8, 3), np.uint8))
    np.save(tmp_path / "raw.npy", np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "raw.npy").rename(tmp_path / "raw.npz")
    for name, needle in (("flat.npz", "height 0"), ("raw.npz", "raw .npy")):
        p = run("nll", "--model", TINY, "--T", "20", "--data", tmp_path / name, "--out", tmp_path / f"o{name}")
        assert p.returncode == 2 and needle in one_line(p)


def test_the_fid_reference_cache_that_cannot_be_written_is_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    """$HOME (the default cache's place) not writable: the metrics are computed without caching, with a warning
    (in process: a root user can write a read-only folder)."""
    import errno

    from ddpm_bench.metrics import reference_cache

    def refused(*args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "home" / ".cache"))

    monkeypatch.setattr(reference_cache, "store", refused)
    images = tmp_path / "i.npz"
    np.savez(images, np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    assert main(["fid", "--samples", str(images), "--ref", str(images), "--feature-extractor", "tiny-test",
                 "--allow-few-samples", "--no-prc", "--no-progress", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "f")]) == 0
    assert "were not cached" in capsys.readouterr().err and (tmp_path / "f" / "metrics.json").is_file()


@pytest.mark.parametrize("flags,needle", [
    (["--T", str(2**63)], "--T must be at most"), (["--T", "1000000000"], "--T must be at most"),
    (["--draws", str(2**63)], "--draws must lie in"), (["--device", "mps"], "--device mps"),
])
def test_values_that_cannot_be_meant_are_refused(tmp_path, npz, flags, needle):
    base = ["--T", "20"] if "--T" not in flags else []
    p = run("nll", "--model", TINY, *base, "--data", npz, *flags, "--out", tmp_path / "o")
    assert p.returncode == 2 and needle in one_line(p)


def test_ddim_eta_inf_and_gap_max_gap_nan(tmp_path, two):
    p = run("sample", "--model", TINY, "--T", "20", "--num", "2", "--sampler", "ddim", "--eta", "inf",
            "--out", tmp_path / "s")
    assert p.returncode == 2 and "--eta" in one_line(p)
    p = run("gap", *two, "--max-gap", "nan")
    assert p.returncode == 2 and "--max-gap nan" in one_line(p)


@pytest.mark.parametrize("side", ["samples", "ref"])
def test_fid_of_one_image(tmp_path, side):
    one, many = tmp_path / "one.npz", tmp_path / "many.npz"
    np.savez(one, np.zeros((1, 8, 8, 3), np.uint8))
    np.savez(many, np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    samples, ref = (one, many) if side == "samples" else (many, one)
    p = run("fid", "--samples", samples, "--ref", ref, "--feature-extractor", "tiny-test", "--allow-few-samples",
            "--out", tmp_path / "f")
    assert p.returncode == 2 and "at least 2 images" in one_line(p)


def test_a_garbage_standard_inception_weights_file(tmp_path):
    images = tmp_path / "i.npz"
    np.savez(images, np.zeros((4, 8, 8, 3), np.uint8))
    (tmp_path / "w.pth").write_bytes(b"not weights")
    p = run("fid", "--samples", images, "--ref", images, "--inception-weights", tmp_path / "w.pth",
            "--allow-few-samples", "--out", tmp_path / "f")
    assert p.returncode == 2 and "w.pth" in one_line(p) and "is not that of" in one_line(p)


def test_a_finished_output_of_ddpm_bench_0_2_is_still_read(npz, tmp_path):
    """0.2 wrote no content hashes, no `files` record and no `quantity`: its outputs are read as they are."""
    import ddpm_bench

    out = tmp_path / "o"
    assert nll(npz, out) == 0
    obj = json.loads((out / "summary.json").read_text())
    for key in ("content_sha256", "files", "quantity"):
        obj.pop(key)
    (out / "summary.json").write_text(json.dumps({**obj, "ddpm_bench_version": "0.1.0"}))  # as 0.2 named itself
    result = ddpm_bench.read_output(out)
    assert result.summary.quantity == "bound" and result.summary.files == {} and result.per_image.terms.shape[0] == 4
