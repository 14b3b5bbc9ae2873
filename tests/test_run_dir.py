"""The run lifecycle (ddpm_bench/run_dir.py) and model identity: one owner per --out, shards that do not
belong are never merged, and a number stays tied to the weights that produced it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_bench import run_dir
from ddpm_bench.cli import main
from ddpm_bench.errors import OutputDirError
from tests.stderr import without_schedule_warning

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests/plugins.py:tiny_conv_T20"
SAMPLER = f"{ROOT / 'tests' / 'sampling_plugins.py'}:tiny_conv"


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    return path


def nll(npz, out, *args):
    return main(["nll", "--model", PLUGIN, "--T", "20", "--no-progress", "--data", str(npz), "--shard-size", "2",
                 "--out", str(out), *map(str, args)])


def one_line(err: str) -> str:
    lines = without_schedule_warning(err).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- claim and lock --------------------------------------------------------------------------------------------

def test_claim_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    out = tmp_path / "out"
    a = run_dir.claim(out, "nll", {"x": 1})
    assert not a.resumed and json.loads((out / "run.json").read_text())["run_id"] == a.run_id
    assert run_dir.claim(out, "nll", {"x": 1}).resumed  # the same process: re-entrant
    code = ("import sys; from ddpm_bench import run_dir\n"
            "try:\n    run_dir.claim(sys.argv[1], 'nll', {'x': 1})\nexcept Exception as e:\n"
            "    print(e); sys.exit(2)\n")
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and f"in use by another ddpm-bench process (pid {os.getpid()})" in p.stdout
    run_dir.release(out)
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout


def test_another_identity_names_the_difference_and_force_starts_over(tmp_path):
    out = tmp_path / "out"
    run_dir.claim(out, "nll", {"bound": {"seed": 0, "draws": 1}})
    with pytest.raises(OutputDirError, match=r"other settings \(bound.seed: 0 -> 1\)"):
        run_dir.claim(out, "nll", {"bound": {"seed": 1, "draws": 1}})
    with pytest.raises(OutputDirError, match="holds a 'nll' run, not 'sample'"):
        run_dir.claim(out, "sample", {"bound": {"seed": 0, "draws": 1}})
    (out / "leftover.txt").write_text("x")
    rd = run_dir.claim(out, "nll", {"bound": {"seed": 1, "draws": 1}}, force=True)
    assert not rd.resumed and not (out / "leftover.txt").exists() and (out / run_dir.LOCK).exists()


@pytest.mark.parametrize("content, field", [
    ("garbage", "unreadable"), ("[1, 2]", "expected a JSON object"), ('{"command": 3}', "field 'command'"),
    ('{"format": "ddpm-bench-run/1", "command": "nll", "run_id": "00", "identity": {}}', "field 'run_id'"),
])
def test_a_garbage_run_json_is_one_line_exit_2(tmp_path, npz, capsys, content, field):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(content)
    assert nll(npz, out) == 2
    line = one_line(capsys.readouterr().err)
    assert "run.json" in line and field in line and "--force" in line


def test_out_under_a_file_is_one_line_exit_2(tmp_path, npz, capsys):
    (tmp_path / "f").write_text("x")
    assert nll(npz, tmp_path / "f" / "out") == 2
    assert "a parent of it is a file" in one_line(capsys.readouterr().err)


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ddpm_bench.cli import main
    me, peer, base, reps, kind = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    codes = []
    for k in range(reps):
        (base / f"ready-{k}-{me}").touch()
        while not (base / f"ready-{k}-{peer}").exists():  # a barrier: both start within microseconds
            pass
        out = str(base / f"out-{k}")
        if kind == "nll":
            argv = ["nll", "--model", "tests/plugins.py:tiny_conv_T20", "--T", "20", "--data", str(base / "d.npz"),
                    "--shard-size", "1", "--no-progress", "--out", out]
        else:
            argv = ["sample", "--model", "tests/sampling_plugins.py:tiny_conv", "--T", "10", "--image-size", "4",
                    "--num", "6", "--shard-size", "1", "--no-progress", "--out", out]
        codes.append(main(argv))
    print("CODES", " ".join(map(str, codes)))
""")


@pytest.mark.parametrize("kind", ["nll", "sample"])
def test_two_processes_started_together_on_one_out(tmp_path, kind, one_thread):
    """Two processes meet at a barrier before each of 12 runs on a fresh --out: every time exactly one runs
    and the other is refused (exit 2, naming the holder), and the result is that of one process alone."""
    reps = 12
    np.savez(tmp_path / "d.npz", np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    (tmp_path / "racer.py").write_text(RACER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "racer.py"), me, peer, str(tmp_path), str(reps), kind],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, peer in (("a", "b"), ("b", "a"))]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [[int(c) for c in out.split("CODES")[-1].split()] for out, _ in results]
    assert all(len(c) == reps for c in codes), results
    for k in range(reps):
        assert sorted((codes[0][k], codes[1][k])) == [0, 2], (k, codes)
    err = results[0][1] + results[1][1]
    assert err.count("in use by another ddpm-bench process (pid ") == reps and "Traceback" not in err
    if kind == "nll":
        ref = tmp_path / "ref"
        assert main(["nll", "--model", PLUGIN, "--T", "20", "--data", str(tmp_path / "d.npz"), "--shard-size", "1",
                     "--no-progress", "--out", str(ref)]) == 0
        want = np.load(ref / "per_image.npz")["terms"]
        for k in range(reps):
            assert np.array_equal(np.load(tmp_path / f"out-{k}" / "per_image.npz")["terms"], want)
    else:
        from ddpm_bench.data.sample_dir import load_sample_dir

        first = load_sample_dir(tmp_path / "out-0")
        for k in range(1, reps):
            assert np.array_equal(load_sample_dir(tmp_path / f"out-{k}"), first)


# -- shards that do not belong ---------------------------------------------------------------------------------

@pytest.mark.parametrize("other", [("--seed", "1"), ("--model", "tests/plugins.py:tiny_conv_learned_T20",
                                                     "--var-type", "learned"), ("--data", None)],
                         ids=["other-seed", "other-model", "other-images"])
def test_a_shard_of_another_run_is_recomputed_never_merged(tmp_path, npz, capsys, other):
    a, b = tmp_path / "a", tmp_path / "b"
    assert nll(npz, a) == 0
    want = np.load(a / "per_image.npz")["terms"]
    if other[0] == "--data":
        alt = tmp_path / "alt.npz"
        np.savez(alt, np.random.default_rng(9).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
        assert nll(alt, b) == 0
    elif other[0] == "--model":
        assert main(["nll", "--model", other[1], "--var-type", "learned", "--T", "20", "--no-progress", "--data",
                     str(npz), "--shard-size", "2", "--out", str(b)]) == 0
    else:
        assert nll(npz, b, *other) == 0
    shutil.copy(b / "shards" / "nll_000001.npz", a / "shards" / "nll_000001.npz")
    (a / "summary.json").unlink()  # an unfinished run: the shards are what is merged
    capsys.readouterr()
    assert nll(npz, a) == 0
    assert "nll_000001.npz: belongs to another run" in capsys.readouterr().err  # said, then computed again
    assert np.array_equal(np.load(a / "per_image.npz")["terms"], want)  # recomputed, not merged
    # at merge time too: a shard swapped in after the check is refused by name
    rd = run_dir.follow(a, "nll", json.loads((a / "run.json").read_text())["identity"])
    shutil.copy(b / "shards" / "nll_000002.npz", a / "shards" / "nll_000002.npz")
    with pytest.raises(OutputDirError, match=r"nll_000002\.npz: belongs to another run"):
        rd.read_shard("shards/nll_000002.npz", np.arange(4, 6), ("terms",))


def test_outputs_damaged_after_completion_are_detected(tmp_path, npz, capsys):
    out = tmp_path / "out"
    assert nll(npz, out) == 0
    want = np.load(out / "per_image.npz")["terms"]
    (out / "per_image.npz").unlink()
    capsys.readouterr()
    assert nll(npz, out) == 0
    err = capsys.readouterr().err
    assert "already complete" not in err and "per_image.npz: missing" in err
    assert np.array_equal(np.load(out / "per_image.npz")["terms"], want)
    data = (out / "shards" / "nll_000000.npz").read_bytes()
    (out / "shards" / "nll_000000.npz").write_bytes(data[: len(data) // 2])  # cut off after completion
    (out / "shards" / "nll_000001.npz").write_bytes(b"")  # and one emptied
    (out / "summary.json").write_text("{}")  # a summary that is no summary
    capsys.readouterr()
    assert nll(npz, out) == 0
    assert "summary.json: field 'command' is missing (not a 'nll' output)" in capsys.readouterr().err
    assert np.array_equal(np.load(out / "per_image.npz")["terms"], want)  # both shards recomputed
    data = (out / "shards" / "nll_000002.npz").read_bytes()  # a shard cut off after completion, alone
    (out / "shards" / "nll_000002.npz").write_bytes(data[:100])
    assert nll(npz, out) == 0
    err = capsys.readouterr().err
    assert "already complete" not in err and "nll_000002.npz: unreadable or cut-off shard" in err
    assert np.array_equal(np.load(out / "per_image.npz")["terms"], want)


# -- model identity --------------------------------------------------------------------------------------------

WEIGHTS_PLUGIN = textwrap.dedent("""
    import torch
    from pathlib import Path

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x)

    def model():
        net = Net()
        net.load_state_dict(torch.load(Path(__file__).with_name("w.pt"), weights_only=True))
        return net
""")


def test_a_plugin_whose_weights_changed_is_refused_on_resume(tmp_path, npz, capsys):
    plugin = tmp_path / "weights_plugin.py"
    plugin.write_text(WEIGHTS_PLUGIN)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    torch.save({f"conv.{k}": v for k, v in conv.state_dict().items()}, tmp_path / "w.pt")
    args = ["nll", "--model", f"{plugin}:model", "--T", "20", "--data", str(npz), "--no-progress",
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    (tmp_path / "out" / "summary.json").unlink()
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] += 1e-3
    torch.save({f"conv.{k}": v for k, v in conv.state_dict().items()}, tmp_path / "w.pt")
    capsys.readouterr()
    assert main(args) == 2
    assert "other settings (model:" in one_line(capsys.readouterr().err)


def test_a_plain_function_plugin_gets_a_weak_identity_with_a_warning(tmp_path, npz, capsys):
    assert main(["nll", "--model", "tests/plugins.py:oracle_eps_T20", "--T", "20", "--data", str(npz),
                 "--no-progress", "--out", str(tmp_path / "out")]) == 0
    assert "identity is the hash of plugins.py only" in capsys.readouterr().err
    ident = json.loads((tmp_path / "out" / "summary.json").read_text())["model"]["identity"]
    assert ident["strong"] is False and len(ident["sha256"]) == 64


def test_paths_and_moves_are_not_a_change_of_identity(tmp_path, npz, monkeypatch, capsys):
    from tests.test_train import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(ckpt, tmp_path)
    args = ["nll", "--data", str(npz), "--no-progress", "--out", "out"]
    assert main([*args[:1], "--ckpt", rel, *args[1:]]) == 0
    first = json.loads(Path("out/summary.json").read_text())
    Path("out/summary.json").unlink()
    moved = tmp_path / "elsewhere" / "renamed.pt"
    moved.parent.mkdir()
    shutil.copy(ckpt, moved)
    shutil.move("out", "moved-out")
    capsys.readouterr()
    assert main([*args[:1], "--ckpt", str(moved), "--data", str(npz), "--no-progress", "--out",
                 str(tmp_path / "moved-out")]) == 0  # resumed: same weights, same run
    second = json.loads(Path("moved-out/summary.json").read_text())
    assert second["model"]["identity"]["sha256"] == first["model"]["identity"]["sha256"]
    assert second["total_bpd"] == first["total_bpd"] and second["model"]["path"] != first["model"]["path"]
    # the raw weights of the same checkpoint are another model
    assert main(["nll", "--ckpt", str(moved), "--weights", "raw", "--data", str(npz), "--no-progress",
                 "--out", str(tmp_path / "moved-out")]) == 2
    assert "other settings (model:" in one_line(capsys.readouterr().err)


def test_gap_refuses_ema_against_raw_weights_of_one_checkpoint(tmp_path, npz, capsys):
    from tests.test_train import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path)
    other = tmp_path / "other.npz"
    np.savez(other, np.random.default_rng(5).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    base = ["nll", "--ckpt", str(ckpt), "--no-progress"]
    assert main([*base, "--data", str(npz), "--out", str(tmp_path / "train")]) == 0
    assert main([*base, "--weights", "raw", "--data", str(other), "--out", str(tmp_path / "test")]) == 0
    assert main([*base, "--data", str(other), "--out", str(tmp_path / "test_ema")]) == 0
    capsys.readouterr()
    assert main(["gap", str(tmp_path / "train"), str(tmp_path / "test")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "different models" in line and "weights: 'ema' -> 'raw'" in line
    assert main(["gap", str(tmp_path / "train"), str(tmp_path / "train")]) == 2
    assert "the same nll run" in one_line(capsys.readouterr().err)
    assert main(["gap", str(tmp_path / "train"), str(tmp_path / "test_ema"), "--max-gap", "100"]) == 0


def test_the_weights_hash_sees_every_tensor_zero_dim_included():
    from ddpm_bench.identity import state_dict_sha256

    a = {"scale": torch.tensor(1.0), "w": torch.zeros(2, 3), "empty": torch.zeros(0)}
    same = {"w": torch.zeros(2, 3), "empty": torch.zeros(0), "scale": torch.tensor(1.0)}  # order does not matter
    assert state_dict_sha256(a) == state_dict_sha256(same)
    for changed in ({**a, "scale": torch.tensor(1.5)}, {**a, "w": torch.zeros(3, 2)},
                    {**a, "w": torch.zeros(2, 3, dtype=torch.float64)}, {**a, "renamed": a.pop("empty")}):
        assert state_dict_sha256(changed) != state_dict_sha256(same)


TWO_PLUGINS = textwrap.dedent("""
    import torch

    class Zero(torch.nn.Module):  # no weights at all
        def forward(self, x, t):
            return torch.zeros_like(x)

    class Half(torch.nn.Module):
        def forward(self, x, t):
            return 0.5 * x

    def zero():
        return Zero()

    def half():
        return Half()

    def zero_fn():
        return lambda x, t: torch.zeros_like(x)

    def half_fn():
        return lambda x, t: 0.5 * x
""")


@pytest.mark.parametrize("a, b", [("zero", "half"), ("zero_fn", "half_fn")])
def test_two_weightless_plugins_of_one_file_are_two_models(tmp_path, npz, capsys, a, b):
    (tmp_path / "two.py").write_text(TWO_PLUGINS)
    out = tmp_path / "out"

    def run(name):
        return main(["nll", "--model", f"{tmp_path / 'two.py'}:{name}", "--T", "20", "--data", str(npz),
                     "--no-progress", "--out", str(out)])

    assert run(a) == 0
    first = json.loads((out / "summary.json").read_text())["model"]["identity"]
    assert first["strong"] is False and first["weights_sha256"] is None
    capsys.readouterr()
    assert run(b) == 2  # not "already complete" with the other model's numbers
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "other settings (model:" in errors[0] and "Traceback" not in err


def test_gap_names_an_output_of_another_command_and_a_directory_as_file(tmp_path, npz, capsys):
    assert nll(npz, tmp_path / "a") == 0
    assert main(["rate-distortion", str(tmp_path / "a"), "--out", str(tmp_path / "rd")]) == 0
    capsys.readouterr()
    assert main(["gap", str(tmp_path / "a"), str(tmp_path / "rd")]) == 2
    assert "summary.json: is a 'rate-distortion' output, not a 'nll' output" in one_line(capsys.readouterr().err)
    other = tmp_path / "other.npz"
    np.savez(other, np.random.default_rng(5).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    assert nll(other, tmp_path / "b") == 0
    capsys.readouterr()
    assert main(["gap", str(tmp_path / "a"), str(tmp_path / "b"), "--max-gap", "100", "--out", str(tmp_path)]) == 2
    assert "is a directory, not a file" in one_line(capsys.readouterr().err)
