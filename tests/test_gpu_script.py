"""The GPU measurement script (benchmarks/gpu/run.sh) stays runnable: its smoke mode runs every section's real
code on the CPU at tiny sizes, and results.json must hold every section with a status and finite numbers.

No assertion here is about speed: a section the machine was too slow for is "skipped: ..." or "failed: ran past
its hard limit ..." (a timing), which the test accepts; any other failure is a defect."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import projection
from benchmarks.gpu.plan import SECTIONS

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "gpu" / "run.sh"
TIMING = ("failed: ran past its hard limit", "skipped: no time left", "skipped: the section's budget was spent",
          "skipped: every measurement: the section's budget was spent")
SMOKE_SKIPS = ("skipped: the smoke plan does not compile", "skipped: CUDA only")  # what a CPU cannot measure


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_smoke")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(RUN), str(out), "--smoke"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    return json.loads((out / "results.json").read_text()), out, proc


def numbers(obj, path: str = ""):
    """Every number in a JSON value, with where it is."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj
    elif obj in ("nan", "inf", "-inf"):
        yield path, float(obj)


def statuses(obj, path: str = ""):
    """Every "status" in a JSON value (of sections and of their single measurements), with where it is."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "status" and isinstance(v, str):
                yield path, v
            else:
                yield from statuses(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from statuses(v, f"{path}[{i}]")


def ok(results: dict, name: str) -> dict | None:
    section = results["sections"][name]
    return section["result"] if section["status"] == "ok" else None


def rows_ok(result: dict) -> list[dict]:
    return [r for r in result["rows"] if r["status"] == "ok"]


def test_smoke_run_writes_every_section(smoke):
    results, out, proc = smoke
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (out / "results.md").is_file() and "## Projection" in (out / "results.md").read_text()
    assert (out / "run.log").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "run.log"]  # all $OUT brings back
    assert results["schema"] == "ddpm-bench-gpu/1" and results["plan"] == "smoke" and results["smoke"] is True
    assert results["command"].startswith("benchmarks/gpu/run.sh") and results["command"].endswith("--smoke")
    assert results["finished"] is not None and results["wall_s"] > 0
    env = results["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["torch_threads"] == 1
    assert results["install"]["pip"].startswith("skipped")
    assert results["model"]["recipe"] == "recipes/cifar10.toml" and results["model"]["params"] > 0
    assert list(results["sections"]) == list(SECTIONS)
    for where, status in statuses(results["sections"]):  # of sections and of single measurements
        assert re.fullmatch(r"ok|skipped: .+|failed: .+", status), (where, status)
        assert status == "ok" or status.startswith(TIMING + SMOKE_SKIPS), (where, status)  # else a defect
    for name, section in results["sections"].items():
        if section["status"] == "ok":
            for where, value in numbers(section["result"], name):
                assert math.isfinite(value), (where, value)


def test_smoke_sections_measure_what_they_say(smoke):
    results = smoke[0]
    if network := ok(results, "network"):
        assert network["flops_per_eval"] > 0 and network["bf16_matmul"]["tflops"] > 0
        assert all(r["evals_per_s"] > 0 and r["tflops"] > 0 for r in rows_ok(network))
        assert network["compile"]["status"].startswith("skipped")  # the smoke plan does not compile
    if bound := ok(results, "bound"):
        defaults = rows_ok(bound)[0]
        assert defaults["setting"] == "defaults" and defaults["batch"] == 32 and defaults["channels_last"] is True
        assert defaults["network_evals"] == defaults["images"] * defaults["T"]
    if precision := ok(results, "precision"):
        by_variant = {r["variant"]: r for r in precision["rows"]}
        if by_variant["tf32"]["status"] == "ok":  # TF32 exists only on NVIDIA GPUs: on a CPU it is fp32
            assert by_variant["tf32"]["identical"] is True and by_variant["tf32"]["paired_diff_mean"] == 0
        if by_variant["bf16"]["status"] == "ok":
            assert by_variant["bf16"]["identical"] is False and by_variant["bf16"]["paired_diff_stderr"] > 0
    if invariance := ok(results, "invariance"):
        resumed = invariance["kill_and_resume"]
        if "identical" in resumed:  # a resumed run is the same bytes as one never stopped (same device, batch)
            assert resumed["identical"] is True and resumed["max_abs_term_diff"] == 0
    if sampler := ok(results, "sampler"):
        for r in rows_ok(sampler):
            assert r["samples_per_s"] == pytest.approx(r["batch"] / (r["steps"] * r["seconds_per_step"]))
    if ode := ok(results, "ode"):
        assert all(r["nfe_mean"] > 0 for r in rows_ok(ode)) and ode["trained_model"]["nfe_mean"] > 0
    if trainer := ok(results, "trainer"):
        assert trainer["batch"] == 8 and all(r["steps_per_s"] > 0 for r in rows_ok(trainer))
    if fid := ok(results, "fid"):
        fids = fid["fid_same_features"]
        assert fid["features_per_s"] > 0 and isinstance(fids["torch-fidelity"], float)
        if isinstance(fids["clean-fid"], float):  # both backends on the same features agree
            assert fids["relative_difference"] < 1e-6
    if proj := ok(results, "projection"):
        assert len(proj["rows"]) == len(projection.PROTOCOL)


def test_projection_is_work_over_rate():
    sections = {
        "bound": {"result": {"rows": [{"setting": "defaults", "evals_per_s": 1000.0, "engine_share": 0.05,
                                       "status": "ok"},
                                      {"setting": "fastest", "evals_per_s": 4000.0, "engine_share": 0.2,
                                       "status": "ok"}]}},
        "sampler": {"result": {"rows": [
            {"setting": s, "sampler": k, "batch": 128, "samples_per_s": v, "status": "ok"}
            for s, k, v in (("defaults", "ancestral", 2.0), ("defaults", "ddim", 20.0),
                            ("fastest", "ancestral", 5.0), ("fastest", "ddim", 50.0))]}},
        "ode": {"result": {"trained_model": {"nfe_mean": 200.0},
                           "rows": [{"batch": 64, "nfe_mean": 50.0, "seconds_per_nfe_per_image": 0.001,
                                     "status": "ok"}]}},
        "trainer": {"result": {"batch": 128, "rows": [{"setting": "as the trainer runs (torch defaults)",
                                                       "steps_per_s": 10.0, "status": "ok"}],
                               "fastest_faithful": {"setting": "tf32", "steps_per_s": 20.0}}},
        "fid": {"result": {"features_per_s": 2000.0}},
    }
    p = projection.project(sections, "NVIDIA H200")
    rows = {r["what"]: r for r in p["rows"]}
    assert rows["exact bound, test split"]["defaults"]["seconds"] == 10_000 * 1000 / 1000.0
    assert rows["exact bound, train split"]["fastest"]["seconds"] == 50_000 * 1000 / 4000.0
    assert rows["--terms 25 for the gap, both splits"]["defaults"]["seconds"] == 60_000 * 26 / 1000.0
    assert rows["50000 samples x 1000 ancestral steps"]["fastest"]["seconds"] == 50_000 / 5.0
    assert rows["ODE likelihood, test split"]["defaults"]["seconds"] == pytest.approx(10_000 * 200 * 0.001)
    assert p["training"]["fastest"]["seconds"] == 800_000 / 20.0
    fastest = p["totals"]["fastest"]
    goal = sum(r["fastest"]["seconds"] for r in p["rows"] if r["in_goal_protocol"])
    assert fastest["goal_protocol_s"] == pytest.approx(goal) and fastest["missing"] == []
    assert p["goals"]["engine_share_at_most_10pct"]["met"] == {"defaults": True, "fastest": False}
    assert p["goals"]["protocol_under_1h"]["met"] is (goal < 3600)
    del sections["fid"]  # a missing rate leaves its row and every total it is part of without a number
    p = projection.project(sections)
    assert p["totals"]["defaults"]["all_rows_s"] is None and p["totals"]["defaults"]["goal_protocol_s"] is None
    assert p["goals"]["protocol_under_1h"]["met"] is False


def test_the_torch_fidelity_wheel_imports_from_the_tree():
    """The GPU machine has no torch-fidelity, which `import ddpm_bench` needs: run.sh puts this wheel on the path."""
    wheel = next((REPO / "benchmarks" / "gpu" / "wheels").glob("torch_fidelity-*-py3-none-any.whl"))
    code = "import torch_fidelity, sys; print(torch_fidelity.__file__)"
    got = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(wheel)},
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().startswith(str(wheel)), got.stdout


def test_run_sh_refuses_bad_usage(tmp_path):
    for args in ([], [str(tmp_path), "--fast"]):
        got = subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, timeout=30)
        assert got.returncode == 2 and "usage" in got.stderr
