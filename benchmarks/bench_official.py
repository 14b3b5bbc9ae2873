"""The exact bound engine at `ddpm-bench nll`'s default flags against a plain float32 loop of the official
algorithm on the same network and images (issue 13, "fast by default").

The plain loop is the official one (diffusion_tf `calc_bpd_loop`, improved-diffusion `calc_bpd_loop`),
written here from its formulas: for t = T-1 down to 0, one network call on the batch of all images at
timestep t, `torch.randn` noise, float32 terms (the decoder with the official tanh CDF), the x0 and eps
errors, then the prior term; it runs in this process, with glibc's allocator as it comes (or, with
`--official-allocator tuned`, with ddpm-bench's allocator settings, ddpm_bench/allocator.py). The engine is
the real command, `python -m ddpm_bench nll` in a process of its own, with no speed flags, so what it
chooses for this device is what is measured; the times compared are the computation's (the engine's
`summary.json` seconds), not Python's start-up. Its per-call step is also timed against the network
alone, which gives the share of the engine's own work (noise, float64 terms, checks).

    PYTHONPATH=. python benchmarks/bench_official.py --net tiny --ckpt runs/tiny/checkpoints/ckpt_0000200.pt
    PYTHONPATH=. python benchmarks/bench_official.py --net conv
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddpm_bench import allocator
from ddpm_bench.data import DataSpec
from ddpm_bench.models.formats import load_model, load_network
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import Execution
from ddpm_bench.variational_bound import bound_pairs, default_pairs_per_call, to_model_scale

HERE = Path(__file__).resolve().parent


def _coef(values: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    """improved-diffusion's `_extract_into_tensor`: float64 table, float32 per-row coefficient."""
    return torch.from_numpy(values)[t].float()[:, None, None, None]


def _approx_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _decoder_ll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    c = x - mean
    inv = torch.exp(-log_scale)
    cdf_plus, cdf_min = _approx_cdf(inv * (c + 1 / 255)), _approx_cdf(inv * (c - 1 / 255))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_plus,
                       torch.where(x > 0.999, log_one_minus_min, torch.log(delta.clamp(min=1e-12))))


def _kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def plain_official_loop(net, betas: np.ndarray, x_uint8: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Per-image total bits/dim by the official algorithm in float32 (eps prediction, fixed-large variance,
    x0 clipped), one timestep at a time over the batch of all images."""
    torch.manual_seed(seed)
    T = len(betas)
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    c1, c2 = betas * np.sqrt(ab_prev) / (1.0 - ab), (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab)
    model_logvar = np.log(np.append(post_var[1], betas[1:]))  # fixed-large
    x0 = x_uint8.float() / 127.5 - 1.0
    N = x0.shape[0]
    total = torch.zeros(N)
    with torch.inference_mode():
        for step in reversed(range(T)):
            t = torch.full((N,), step, dtype=torch.long)
            noise = torch.randn_like(x0)
            xt = _coef(np.sqrt(ab), t) * x0 + _coef(np.sqrt(1.0 - ab), t) * noise
            eps = net(xt, t)
            x0_hat = (_coef(np.sqrt(1.0 / ab), t) * xt - _coef(np.sqrt(1.0 / ab - 1.0), t) * eps).clamp(-1, 1)
            mean = _coef(c1, t) * x0_hat + _coef(c2, t) * xt
            logvar = _coef(model_logvar, t).expand_as(x0)
            if step == 0:
                nats = -_decoder_ll(x0, mean, 0.5 * logvar)
            else:
                true_mean = _coef(c1, t) * x0 + _coef(c2, t) * xt
                nats = _kl(true_mean, _coef(post_logvar, t), mean, logvar)
            total += nats.flatten(1).mean(1) / math.log(2.0)
            # calc_bpd_loop also records the x0 and eps errors of every step
            _ = ((x0_hat - x0) ** 2).flatten(1).mean(1), ((eps - noise) ** 2).flatten(1).mean(1)
        prior = _kl(_coef(np.sqrt(ab), torch.full((N,), T - 1)) * x0, torch.tensor(math.log(1.0 - ab[-1])),
                    torch.zeros(()), torch.zeros(()))
        total += prior.flatten(1).mean(1) / math.log(2.0)
    return total.double().numpy()


def engine_share(spec: ModelSpec, data: DataSpec, reps: int, pairs: int | None = None) -> dict:
    """The engine's step against its network alone, on one full call of `pairs` (default: the device's)."""
    dev = torch.device("cpu")
    source = load_network(spec, Execution(device="cpu"))
    images = data.load()
    B = pairs or default_pairs_per_call(dev, images.shape)
    s = source.diffusion.schedule()
    m = min(len(images), B)
    x0_all = to_model_scale(torch.from_numpy(images.images[:m]).permute(0, 3, 1, 2))
    index = torch.from_numpy(images.index[:m])
    flat = torch.arange(B)
    n, k, d = flat % m, (flat * 7919) % source.diffusion.T, torch.zeros_like(flat)
    step_net = {"s": 0.0}
    backbone = source._backbone

    def timed_net(x, i):
        t0 = time.perf_counter()
        out = backbone(x, i)
        step_net["s"] += time.perf_counter() - t0
        return out

    source._backbone = timed_net  # the network alone, inside the wrapper's call
    steps, nets = [], []
    for r in range(reps + 1):
        step_net["s"] = 0.0
        t0 = time.perf_counter()
        bound_pairs(source, s, x0_all, index, n, d, k)
        if r:  # the first call warms up
            steps.append(time.perf_counter() - t0)
            nets.append(step_net["s"])
    step, network = statistics.median(steps), statistics.median(nets)
    return {"pairs_per_call": B, "channels_last": source.channels_last,
            "step_ms_per_eval": 1e3 * step / B, "network_ms_per_eval": 1e3 * network / B,
            "non_network_share": (step - network) / network}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=("tiny", "conv"), required=True)
    p.add_argument("--ckpt", help="the tiny U-Net: a checkpoint trained by the reference trainer (--net tiny)")
    p.add_argument("--images", type=int, default=None, help="default 12 (tiny) or 64 (conv)")
    p.add_argument("--T", type=int, default=1000, help="diffusion steps of the conv net")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--official-allocator", choices=("default", "tuned"), default="default")
    p.add_argument("--share-only", type=int, nargs="*", metavar="PAIRS",
                   help="only time the engine's step against its network, at these pairs per call")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_official_"))
    if a.official_allocator == "tuned":
        allocator.keep_freed_memory()
    if a.net == "tiny":
        if a.ckpt is None:
            p.error("--net tiny needs --ckpt")
        n_images = a.images or 12
        spec, model_flags = ModelSpec(ckpt=a.ckpt), ["--ckpt", a.ckpt]
        data = DataSpec("embedded:test", None, n_images)
        data_flags = ["--data", "embedded:test", "--num-images", str(n_images)]
    else:
        n_images = a.images or 64
        rng = np.random.default_rng(0)
        np.savez(work / "images.npz", arr_0=rng.integers(0, 256, (n_images, 16, 16, 3), dtype=np.uint8))
        spec = ModelSpec(model=f"{HERE / 'conv_net.py'}:conv_net", diffusion_flags={"T": a.T})
        model_flags = ["--model", f"{HERE / 'conv_net.py'}:conv_net", "--T", str(a.T)]
        data = DataSpec(str(work / "images.npz"), None, None)
        data_flags = ["--data", str(work / "images.npz")]
    if a.share_only is not None:
        allocator.keep_freed_memory()
        for pairs in a.share_only or [None]:
            share = engine_share(spec, data, reps=7, pairs=pairs)
            print(f"{share['pairs_per_call']} pairs: step {share['step_ms_per_eval']:.4f} ms/eval, network "
                  f"{share['network_ms_per_eval']:.4f}; non-network {100 * share['non_network_share']:.1f}%")
        return
    source = load_model(spec)  # the backbone alone, as the plain loop calls it
    images = data.load()
    x = torch.from_numpy(images.images).permute(0, 3, 1, 2).contiguous()
    betas = source.diffusion.schedule().betas.numpy()
    evals = n_images * source.diffusion.T
    print(f"{a.net}: {n_images} images {tuple(x.shape[1:])}, T = {source.diffusion.T}: {evals} network "
          f"evaluations per run; {torch.get_num_threads()} threads; median of {a.repeats} interleaved repeats",
          flush=True)
    times = {"official": [], "engine": [], "engine_wall": []}
    totals = {}
    for r in range(a.repeats):  # interleaved: both see the same load of a shared machine
        t0 = time.perf_counter()
        totals["official"] = plain_official_loop(source.backbone, betas, x, seed=r)
        times["official"].append(time.perf_counter() - t0)
        out = work / f"engine{r}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ddpm_bench", "nll", *model_flags, *data_flags, "--seed", str(r),
                        "--no-progress", "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        times["engine_wall"].append(time.perf_counter() - t0)
        summary = json.loads((out / "summary.json").read_text())
        times["engine"].append(summary["seconds"])
        totals["engine"] = np.load(out / "per_image.npz")["terms"].sum(1)
        execution = summary["network_execution"] | {"batch_size": summary["batch_size"]}
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = totals["engine"] - totals["official"]
    allocator.keep_freed_memory()  # as the command does
    share = engine_share(spec, data, reps=5)
    result = {
        "net": a.net, "images": n_images, "T": source.diffusion.T, "evals": evals,
        "official_s": med["official"], "engine_s": med["engine"], "engine_wall_s": med["engine_wall"],
        "official_allocator": a.official_allocator, "runs": times,
        "speedup": med["official"] / med["engine"], "engine_defaults": execution,
        "official_bpd": float(totals["official"].mean()), "engine_bpd": float(totals["engine"].mean()),
        "paired_diff": float(diff.mean()), "paired_diff_se": float(diff.std(ddof=1) / math.sqrt(len(diff))),
        **share,
    }
    print(f"official loop (float32, batch of {n_images} images, {a.official_allocator} allocator): "
          f"{med['official']:.2f} s "
          f"({1e3 * med['official'] / evals:.2f} ms/eval)")
    print(f"engine at defaults {execution}: {med['engine']:.2f} s ({1e3 * med['engine'] / evals:.2f} ms/eval) "
          f"-> {result['speedup']:.2f}x the official loop ({med['engine_wall']:.2f} s with Python's start-up)")
    print(f"bits/dim: official {result['official_bpd']:.4f}, engine {result['engine_bpd']:.4f}, paired "
          f"difference {result['paired_diff']:+.4f} +- {result['paired_diff_se']:.4f} (other noise: torch.randn "
          "vs counter noise)")
    print(f"engine step at {share['pairs_per_call']} pairs: {share['step_ms_per_eval']:.3f} ms/eval, network "
          f"{share['network_ms_per_eval']:.3f}; non-network work {100 * share['non_network_share']:.1f}% of the "
          "network's time")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
