"""Failures end in one line on stderr with the SPEC's exit status (2: bad input, 1: anything else), never a
traceback, and leave no file that looks complete."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_bench import failures
from ddpm_bench.cli import main
from ddpm_bench.config import load_recipe
from ddpm_bench.diffusion import DiffusionConfig, DiffusionSettingError
from ddpm_bench.errors import ConfigError
from tests.stderr import without_schedule_warning

REPO = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).parent / "error_plugins.py"
ZEROS = f"{PLUGINS}:zeros"


def run(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ddpm_bench", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def one_line(p: subprocess.CompletedProcess | str) -> str:
    """The single line on stderr (and no traceback)."""
    err = p if isinstance(p, str) else p.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    lines = without_schedule_warning(err).splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    return path


def looks_complete(out: Path) -> list[str]:
    """What under `out` a reader could take for a finished run: the completion markers (nll's summary.json,
    a sample manifest with complete = true, fid's metrics.json) and any temporary file left behind."""
    if not out.exists():
        return []
    names = [p.name for p in out.rglob("*") if p.is_file()]
    bad = [n for n in names if n.endswith(".tmp") or n in ("summary.json", "metrics.json")]
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("complete"):
        bad.append("manifest.json (complete)")
    return bad


# 1. a checkpoint whose stored config is impossible: exit 2 naming the checkpoint and the field


def write_ckpt(path: Path, section: str, key: str, value) -> Path:
    from ddpm_bench.checkpoint import save_checkpoint
    from ddpm_bench.config import config_from_dict
    from ddpm_bench.models.registry import build_model

    cfg = config_from_dict({"model": {"image_size": 8, "ch": 32, "ch_mult": [1], "num_res_blocks": 1,
                                      "attn_resolutions": [], "dropout": 0.0},
                            "diffusion": {"T": 20}}, "test").to_dict()
    state = build_model(cfg["model"]).state_dict()
    cfg[section][key] = value
    save_checkpoint(path, {"config": cfg, "model": state, "ema": state, "optimizer": {}, "step": 0})
    return path


@pytest.mark.parametrize("section,key,value", [
    ("model", "ch_mult", []), ("model", "ch", "wide"), ("model", "num_res_blocks", 0), ("diffusion", "T", -5),
    ("diffusion", "T", 2.5), ("diffusion", "beta_end", 1.5), ("diffusion", "beta_start", 0.0),
    ("diffusion", "beta_schedule", "zigzag"),
])
def test_checkpoint_with_impossible_stored_config_exits_2_naming_it(tmp_path, npz, section, key, value):
    ckpt = write_ckpt(tmp_path / "bad.pt", section, key, value)
    out = tmp_path / "out"
    p = run("nll", "--ckpt", ckpt, "--data", npz, "--out", out, "--no-progress")
    line = one_line(p)
    assert p.returncode == 2 and str(ckpt) in line and f"{section}.{key}" in line, line
    assert looks_complete(out) == []


def test_inspect_and_sample_refuse_the_same_checkpoint(tmp_path):
    ckpt = write_ckpt(tmp_path / "bad.pt", "model", "ch_mult", [])
    p = run("inspect", "--ckpt", ckpt)
    assert p.returncode == 2 and "model.ch_mult" in one_line(p) and p.stdout == ""
    ckpt = write_ckpt(tmp_path / "bad2.pt", "diffusion", "T", -5)
    p = run("sample", "--ckpt", ckpt, "--num", 2, "--out", tmp_path / "s", "--no-progress")
    assert p.returncode == 2 and "diffusion.T" in one_line(p) and str(ckpt) in p.stderr
    assert looks_complete(tmp_path / "s") == []


# 2. impossible diffusion flags: exit 2 naming the flag; the same check for recipes and checkpoints


@pytest.mark.parametrize("flags,needle", [
    (["--T", "0"], "--T must be at least 1, got 0"),
    (["--beta-start", "0"], "--beta-start must be a number in (0, 1)"),
    (["--beta-end", "1"], "--beta-end must be a number in (0, 1)"),
    (["--beta-start", "-0.1", "--beta-schedule", "cosine"], "--beta-start"),
    (["--beta-start", "0.05"], "--beta-start 0.05 is larger than --beta-end 0.02"),
    (["--beta-start", "0.2", "--beta-end", "0.1", "--beta-schedule", "quad"], "--beta-start 0.2 is larger than --beta-end 0.1"),
])
def test_impossible_diffusion_flags_exit_2_naming_the_flag(tmp_path, flags, needle):
    out = tmp_path / "s"
    p = run("sample", "--model", ZEROS, "--num", 2, "--image-size", 8, "--out", out, "--no-progress", *flags)
    assert p.returncode == 2 and needle in one_line(p)
    assert not out.exists()


def test_impossible_diffusion_flags_of_nll_exit_2(tmp_path, npz):
    p = run("nll", "--model", ZEROS, "--T", 0, "--data", npz, "--out", tmp_path / "o")
    assert p.returncode == 2 and "--T must be at least 1" in one_line(p)


def test_beta_order_is_only_needed_by_rising_schedules():
    DiffusionConfig(beta_schedule="cosine", beta_start=0.5, beta_end=0.02)
    DiffusionConfig(beta_schedule="const", beta_start=0.5, beta_end=0.02)
    with pytest.raises(DiffusionSettingError, match="diffusion.beta_start 0.5 is larger than diffusion.beta_end"):
        DiffusionConfig(beta_start=0.5)


def test_recipes_get_the_same_checks(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[diffusion]\nT = 0\n")
    with pytest.raises(ConfigError, match=r"r\.toml: .*diffusion\.T must be at least 1"):
        load_recipe(recipe)
    recipe.write_text("")
    with pytest.raises(ConfigError, match=r"diffusion.beta_end must be a number in \(0, 1\)"):
        load_recipe(recipe, ["diffusion.beta_end=2.0"])


# 3. a plug-in whose f(x, t) returns something else than a tensor: exit 2 naming it and what it returned


@pytest.mark.parametrize("command", ["sample", "nll"])
@pytest.mark.parametrize("plugin,needle", [("returns_tuple", "returned a tuple of 2"),
                                           ("returns_ndarray", "returned a numpy.ndarray of shape"),
                                           ("returns_none", "returned None")])
def test_plugin_returning_a_non_tensor_exits_2_naming_it(tmp_path, npz, command, plugin, needle):
    spec = f"{PLUGINS}:{plugin}"
    out = tmp_path / "o"
    extra = ["--num", 2, "--image-size", 8] if command == "sample" else ["--data", npz]
    p = run(command, "--model", spec, "--T", 3, "--out", out, "--no-progress", *extra)
    line = one_line(p)
    assert p.returncode == 2 and f"--model {spec}: f(x, t) {needle}" in line, line
    assert looks_complete(out) == []


# 4. an exception inside a plug-in is the plug-in's error: exit 1, one line naming its last frame


@pytest.mark.parametrize("command", ["sample", "nll"])
@pytest.mark.parametrize("plugin,what,frame", [
    ("factory_raises", "FileNotFoundError: no weights at /nowhere/weights.pt", "_load_weights"),
    ("forward_raises", "ValueError: decoder expects 16 channels", "decode"),
])
def test_exception_in_a_plugin_is_reported_as_its_error(tmp_path, npz, command, plugin, what, frame):
    spec = f"{PLUGINS}:{plugin}"
    out = tmp_path / "o"
    extra = ["--num", 2, "--image-size", 8] if command == "sample" else ["--data", npz]
    p = run(command, "--model", spec, "--T", 3, "--out", out, "--no-progress", *extra)
    line = one_line(p)
    lines = PLUGINS.read_text().splitlines()
    raising = next(i + 1 for i, text in enumerate(lines) if "raise" in text and what.split(": ", 1)[1][:10] in text)
    assert p.returncode == 1
    assert line == f"ddpm-bench {command}: error in plug-in {spec}: {what} (at {PLUGINS}:{raising} in {frame})"
    assert looks_complete(out) == []


# 5. the environment: disk full, read-only, a path through a file, out of memory, a closed stdout


@contextmanager
def mounted_tmpfs(path: Path, options: str):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_exits_1_naming_the_file_on_a_small_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "small", "size=64k") as small:
        out = small / "s"  # 64 samples of 32x32x3 are 196 KB: the first shard does not fit
        p = run("sample", "--model", ZEROS, "--T", 2, "--num", 64, "--out", out, "--no-progress")
        line = one_line(p)
        assert p.returncode == 1 and re.search(rf"no space left on device writing {re.escape(str(out))}/\S+", line), line
        assert looks_complete(out) == [] and not list(out.glob("samples_*"))


def test_disk_full_in_process_exits_1_and_leaves_no_complete_file(tmp_path, npz, monkeypatch, capsys):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a descriptor writes")
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while summary.json is written
        if "summary.json" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    code = main(["nll", "--model", ZEROS, "--T", "3", "--data", str(npz), "--out", str(out), "--no-progress"])
    line = [x for x in without_schedule_warning(capsys.readouterr().err).splitlines() if x.startswith("ddpm-bench")]
    assert code == 1 and line == [f"ddpm-bench nll: no space left on device writing {out / 'summary.json'}; "
                                  "free some space and run the same command again to resume"]
    assert looks_complete(out) == [] and (out / "run.json").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the same command finishes the run
    assert main(["nll", "--model", ZEROS, "--T", "3", "--data", str(npz), "--out", str(out), "--no-progress"]) == 0
    assert (out / "summary.json").exists()


def test_read_only_out_exits_1_naming_the_path(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        p = run("sample", "--model", ZEROS, "--T", 2, "--num", 2, "--out", ro / "s", "--no-progress")
        assert p.returncode == 1 and one_line(p) == f"ddpm-bench sample: cannot write {ro / 's'}: read-only file system"


def test_permission_refused_exits_1_naming_the_path(tmp_path, npz, monkeypatch, capsys):
    def mkdir(self, *args, **kwargs):  # root ignores file modes: refuse like a directory we may not write
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    out = tmp_path / "denied"
    assert main(["nll", "--model", ZEROS, "--T", "3", "--data", str(npz), "--out", str(out)]) == 1
    assert one_line(capsys.readouterr().err) == f"ddpm-bench nll: cannot write {out}: permission denied"


def test_out_under_a_file_exits_2_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    p = run("sample", "--model", ZEROS, "--T", 2, "--num", 2, "--out", tmp_path / "file" / "s", "--no-progress")
    assert p.returncode == 2 and str(tmp_path / "file" / "s") in one_line(p) and "not a directory" in p.stderr


@pytest.mark.parametrize("plugin", ["cuda_out_of_memory", "memory_error"])
def test_out_of_memory_exits_1_naming_the_batch_size(tmp_path, npz, plugin):
    out = tmp_path / "o"
    p = run("nll", "--model", f"{PLUGINS}:{plugin}", "--T", 3, "--data", npz, "--batch-size", 8, "--out", out,
            "--no-progress")
    line = one_line(p)
    assert p.returncode == 1 and "out of" in line and "memory with --batch-size 8: lower it" in line, line
    assert looks_complete(out) == []


def test_out_of_memory_kinds_and_commands_without_batch_size():
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                       "to allocate 1125899906842624 bytes.")
    assert failures.is_out_of_memory(cpu) and failures.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not failures.is_out_of_memory(RuntimeError("shape mismatch"))
    status, line = failures.describe(MemoryError(), argparse.Namespace(command="train"))
    assert status == 1 and "training.batch_size" in line


def test_closed_stdout_exits_quietly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "ddpm_bench", "inspect", "--recipe", str(REPO / "recipes/tiny.toml")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader is gone before anything is written (as `| head -c1` after its byte)
    err = p.stderr.read().decode()
    assert p.wait() in (1, 141) and err == ""


# 6. an empty --data


def test_empty_data_exits_2(tmp_path):
    p = run("nll", "--model", ZEROS, "--T", 3, "--data", "", "--out", tmp_path / "o")
    assert p.returncode == 2 and one_line(p).startswith("ddpm-bench nll: error: --data: empty")
    assert not (tmp_path / "o").exists()


# 7. seeds outside 0..2**63-1


@pytest.mark.parametrize("command", ["nll", "sample", "rate-distortion"])
@pytest.mark.parametrize("value", ["-1", str(2**63), "seven"])
def test_seed_outside_int64_range_exits_2_naming_the_flag(tmp_path, npz, command, value):
    extra = ["--num", 2] if command == "sample" else ["--data", npz]
    p = run(command, "--model", ZEROS, "--T", 3, "--seed", value, "--out", tmp_path / "o", *extra)
    line = one_line(p)
    assert p.returncode == 2 and "--seed" in line and value in line, line
    assert not (tmp_path / "o").exists()


def test_largest_seed_is_accepted():
    from ddpm_bench.cli import build_parser

    args = build_parser().parse_args(["sample", "--model", ZEROS, "--num", "1", "--out", "o", "--seed", str(2**63 - 1)])
    assert args.seed == 2**63 - 1


# 8. a garbage or wrongly typed FID reference-cache entry is a cache miss: recomputed, overwritten, warned


def _garbage_entries(valid: Path) -> dict[str, bytes]:
    from ddpm_bench.metrics import reference_cache

    good = valid.read_bytes()
    with np.load(valid) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    entries = {"garbage": b"not an npz at all", "truncated": good[: len(good) // 2], "empty": b""}

    def npz_bytes(**changed) -> bytes:
        tmp = valid.with_suffix(".tmp.npz")
        np.savez(tmp, **{**arrays, **changed})
        data = tmp.read_bytes()
        tmp.unlink()
        return data

    entries["meta-not-a-dict"] = npz_bytes(meta=np.array("[1, 2]"))
    entries["key-not-a-dict"] = npz_bytes(meta=np.array(json.dumps({**meta, "key": "x"})))
    feats = arrays["features"].astype(np.int64)  # wrongly typed, with a checksum that matches it
    typed = {**meta, "content_sha256": reference_cache._content_sha256(feats, arrays["mu"], arrays["sigma"])}
    entries["int-features"] = npz_bytes(features=feats, meta=np.array(json.dumps(typed)))
    key = {**meta["key"], "image_shape": "32x32"}
    entries["wrong-key-type"] = npz_bytes(meta=np.array(json.dumps({**meta, "key": key})))
    return entries


def test_garbage_reference_cache_entries_are_recomputed_with_a_warning(tmp_path, capsys):
    from ddpm_bench.metrics import reference_cache
    from ddpm_bench.metrics.extractors import TINY_TEST

    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    np.savez(b, rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    cache = tmp_path / "cache"
    argv = ["fid", "--samples", str(a), "--ref", str(b), "--feature-extractor", TINY_TEST, "--cache-dir", str(cache),
            "--device", "cpu", "--no-progress", "--allow-few-samples", "--no-prc", "--force", "--out", str(tmp_path / "f")]
    assert main(argv) == 0
    first = json.loads((tmp_path / "f" / "metrics.json").read_text())
    (entry,) = cache.glob("*.npz")
    good = reference_cache.read_entry(entry)
    for name, content in _garbage_entries(entry).items():
        entry.write_bytes(content)
        capsys.readouterr()
        assert main(argv) == 0, name
        err = capsys.readouterr().err
        warned = [x for x in err.splitlines() if "cache entry unusable" in x]
        assert "Traceback" not in err and len(warned) == 1 and warned[0].startswith("ddpm-bench fid: warning:"), (name, err)
        metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
        assert metrics["reference_statistics"]["torch-fidelity"]["from"] == "computed", name
        assert metrics["fid"] == first["fid"], name
        meta, feats, stats = reference_cache.read_entry(entry)  # overwritten by the recomputed entry
        assert meta == good[0] and np.array_equal(feats, good[1]) and np.array_equal(stats["mu"], good[2]["mu"]), name
        assert not list(cache.glob("*.tmp")), name
