"""`nll --ode`: the probability-flow ODE likelihood as an estimator of the run lifecycle (closed form through
the command, invariance to batch size and restarts, the API, and its refusals)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import ddpm_bench
from ddpm_bench.cli import main
from ddpm_bench.estimators.ode import OdeOptions
from ddpm_bench.noise_level import noise_levels
from ddpm_bench.probability_flow import dequantization_noise, dequantize
from ddpm_bench.schedule import make_schedule

ORACLE = "tests/plugins.py:gaussian_oracle_T100"
FRACTIONAL = "tests/plugins.py:tiny_conv_T20_fractional"
SUMMARY_KEYS = {"estimator", "quantity", "total_bpd", "total_bpd_stderr", "prior_bpd", "divergence_bpd",
                "dequantization_bpd", "nfe_mean", "network_evals", "ode", "n_images", "dims", "T", "model", "seed"}


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8))
    return path


def ode(model, data, out, *extra, T=100):
    return main(["nll", "--model", model, "--T", str(T), "--data", str(data), "--ode", "--no-progress",
                 "--out", str(out), *map(str, extra)])


def per_image(out):
    with np.load(out / "per_image.npz") as z:
        return {k: z[k] for k in z.files}


def closed_form_bpd(images: np.ndarray, seed: int = 0, mu: float = 0.1, s: float = 0.5, T: int = 100,
                    sigma_range: tuple[float, float] | None = None) -> np.ndarray:
    """bits/dim of each image under the Gaussian oracle's ODE (docs/likelihood.md), with the same
    dequantization noise as the command; over the levels of a linear schedule of T steps, or `sigma_range`."""
    sigmas = noise_levels(make_schedule("linear", T).alphas_cumprod)
    smin, smax = (float(sigmas[0]), float(sigmas[-1])) if sigma_range is None else sigma_range
    v = torch.from_numpy(images).permute(0, 3, 1, 2)
    u = dequantization_noise(seed, torch.arange(len(images)), 0, tuple(v.shape[1:]))
    x0 = dequantize(v, u).flatten(1).numpy()
    D = x0.shape[1]
    y1 = mu + (x0 - mu) * math.sqrt((s**2 + smax**2) / (s**2 + smin**2))
    logp = -0.5 * D * math.log(2 * math.pi * (1 + smax**2)) - 0.5 * (y1**2).sum(1) / (1 + smax**2) \
        + 0.5 * D * math.log((s**2 + smax**2) / (s**2 + smin**2))
    return -logp / (D * math.log(2)) + math.log2(127.5)


def test_the_command_gives_the_closed_form_of_the_gaussian_oracle(small, tmp_path):
    out = tmp_path / "o"
    assert ode(ORACLE, small, out, "--divergence", "exact") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary["estimator"] == "ode" and summary["quantity"] == "likelihood"
    got = per_image(out)
    assert set(got) >= {"bpd", "prior_bpd", "divergence_bpd", "nfe", "index"}
    want = closed_form_bpd(np.load(small)["arr_0"])
    np.testing.assert_allclose(got["bpd"], want, atol=2e-5)  # the solver's error at rtol = atol = 1e-5: 6e-7
    assert summary["total_bpd"] == pytest.approx(summary["prior_bpd"] + summary["divergence_bpd"]
                                                 + summary["dequantization_bpd"], rel=1e-12)
    assert summary["network_evals"] == int(got["nfe"].sum()) and summary["nfe_mean"] == pytest.approx(got["nfe"].mean())
    # Rademacher is exact for this oracle (its Jacobian is diagonal): the same numbers with a probe
    assert ode(ORACLE, small, tmp_path / "r") == 0
    np.testing.assert_allclose(per_image(tmp_path / "r")["bpd"], got["bpd"], rtol=1e-9)


def test_per_image_results_do_not_depend_on_batch_size_or_a_restart(small, tmp_path):
    """A network whose rounding depends on the batch: one image solved alone or with others gives the same
    bits/dim within 1e-6 (the solver's steps are the image's own; only the float32 rounding of the network
    differs, and the solver's error control absorbs it)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert ode(FRACTIONAL, small, a, "--batch-size", 1, "--shard-size", 2, T=20) == 0
    assert ode(FRACTIONAL, small, b, "--batch-size", 8, "--shard-size", 2, T=20) == 0
    np.testing.assert_allclose(per_image(a)["bpd"], per_image(b)["bpd"], rtol=1e-6)
    (b / "summary.json").unlink()  # a kill after two shards
    (b / "shards" / "nll_000002.npz").unlink()
    kept = (b / "shards" / "nll_000000.npz").stat().st_mtime_ns
    assert ode(FRACTIONAL, small, b, "--batch-size", 3, "--shard-size", 2, T=20) == 0
    assert (b / "shards" / "nll_000000.npz").stat().st_mtime_ns == kept
    np.testing.assert_allclose(per_image(a)["bpd"], per_image(b)["bpd"], rtol=1e-6)


def test_draws_average_probes_and_the_stderr_includes_them(small, tmp_path):
    one, four = tmp_path / "one", tmp_path / "four"
    assert ode(FRACTIONAL, small, one, "--divergence", "gaussian", T=20) == 0
    assert ode(FRACTIONAL, small, four, "--divergence", "gaussian", "--draws", 4, T=20) == 0
    a, b = per_image(one), per_image(four)
    assert not np.allclose(a["bpd"], b["bpd"]) and (b["nfe"] > a["nfe"]).all()
    s = json.loads((four / "summary.json").read_text())
    assert s["total_bpd_stderr"] == pytest.approx(b["bpd"].std(ddof=1) / math.sqrt(len(b["bpd"])), rel=1e-12)


def test_the_api_gives_the_commands_bits(small, tmp_path):
    out = tmp_path / "o"
    assert ode(ORACLE, small, out) == 0
    from tests.plugins import gaussian_oracle_T100

    result = ddpm_bench.bound(ddpm_bench.load_model(gaussian_oracle_T100(), diffusion={"T": 100}),
                              np.load(small)["arr_0"], options=OdeOptions())
    assert np.array_equal(result.per_image.bpd, per_image(out)["bpd"])
    assert result.summary.quantity == "likelihood" and result.per_image.totals.shape == (5,)


def test_a_likelihood_is_never_compared_with_a_bound(small, tmp_path, capsys):
    other = tmp_path / "y.npz"
    np.savez(other, np.random.default_rng(1).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8))
    assert ode(ORACLE, small, tmp_path / "ode") == 0
    assert main(["nll", "--model", ORACLE, "--T", "100", "--data", str(other), "--no-progress",
                 "--out", str(tmp_path / "bound")]) == 0
    capsys.readouterr()
    assert main(["gap", str(tmp_path / "ode"), str(tmp_path / "bound")]) == 2
    assert "quantity: 'likelihood' -> 'bound'" in capsys.readouterr().err
    assert main(["rate-distortion", str(tmp_path / "ode"), "--out", str(tmp_path / "rd")]) == 2
    assert "need every term" in capsys.readouterr().err
    assert ode(ORACLE, other, tmp_path / "ode2") == 0
    assert main(["gap", str(tmp_path / "ode"), str(tmp_path / "ode2")]) in (0, 1)  # two ODE outputs: compared


def test_models_that_have_no_ode_are_refused_in_one_line(small, tmp_path, capsys):
    assert ode("tests/plugins.py:tiny_conv_T20", small, tmp_path / "a", T=20) == 2
    assert "fractional_steps" in capsys.readouterr().err
    assert ode(ORACLE, small, tmp_path / "b", "--mean-type", "mu") == 2
    assert "mean type 'mu'" in capsys.readouterr().err
    big = tmp_path / "big.npz"
    np.savez(big, np.zeros((1, 64, 64, 3), np.uint8))
    assert ode(ORACLE, big, tmp_path / "c", "--divergence", "exact") == 2
    assert "--divergence exact" in capsys.readouterr().err


def test_dry_run_gives_the_cost_from_a_probe_solve(small, tmp_path, capsys):
    assert ode(ORACLE, small, tmp_path / "o", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "ODE solve" in out and "network evaluations" in out and "ETA" in out and not (tmp_path / "o").exists()


def test_a_report_of_an_ode_output_shows_the_likelihood_and_no_rate_distortion(small, tmp_path):
    assert ode(ORACLE, small, tmp_path / "ode") == 0
    assert main(["report", str(tmp_path / "ode"), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| NLL (ODE) Test (Train)" in report and "8.30 ± 0.04" in report  # the likelihood, in its own column
    assert "Table 4 (rate and distortion) is left out" in report  # a likelihood has no terms
    import pandas as pd

    row = pd.read_csv(tmp_path / "r" / "table1.csv").query("origin == 'measured'").iloc[0]
    assert math.isnan(row["NLL_test"]) and row["NLL_ODE_test_estimator"] == "ode"  # never shown as a bound
