"""The bound engine on the device, through the library (`ddpm_bench.bound`, as `nll` runs it): its speed at
its defaults and at the fastest setting with its own share of the time beside the network; the bits/dim
that each precision, channels-last and `--compile` move against fp32 on the same images and noise; and its
invariance (two batch sizes; a run killed with SIGKILL and resumed)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from functools import partial

import numpy as np

import ddpm_bench
from benchmarks.gpu.network_speed import network_rate
from benchmarks.gpu.timing import guarded
from ddpm_bench.network import CHANNELS_LAST_BY_DEVICE
from ddpm_bench.variational_bound import default_pairs_per_call

DEFAULTS = {"precision": "fp32", "channels_last": None, "compile": None, "batch": None}  # nll without speed flags
SETTING_KEYS = ("precision", "channels_last", "compile", "batch")


def resolve(ctx, setting: dict) -> dict:
    """A setting with the device's defaults filled in (what `nll` chooses when a flag is not given)."""
    s = {**DEFAULTS, **setting}
    if s["channels_last"] is None:
        s["channels_last"] = CHANNELS_LAST_BY_DEVICE.get(ctx.device.type, False)
    if s["batch"] is None:
        s["batch"] = default_pairs_per_call(ctx.device, (ctx.cfg.model.in_channels, ctx.cfg.model.image_size,
                                                         ctx.cfg.model.image_size))
    return s


def network_for(ctx, s: dict):
    """The Network of a resolved setting; a compiled one the network section made is used again."""
    if s["compile"]:
        cached = ctx.cache.get(("compiled", s["precision"], s["channels_last"], s["batch"]))
        if cached is not None:
            return cached
    return ctx.models.network(s["precision"], s["channels_last"], s["compile"])


def exact_bound(ctx, setting: dict, n_images: int):
    """The exact bound of the first `n_images` images at `setting` (cached per setting): the output and the
    network it ran on."""
    s = resolve(ctx, setting)
    key = ("bound", n_images, *(s[k] for k in SETTING_KEYS))
    if key not in ctx.cache:
        net = network_for(ctx, s)
        ddpm_bench.bound(net, ctx.images(1), batch_size=s["batch"])  # warm-up: kernels, allocator, noise
        ctx.cache[key] = (ddpm_bench.bound(net, ctx.images(n_images), batch_size=s["batch"]), net)
    return ctx.cache[key]


def _speed_row(ctx, setting: dict, n_images: int) -> dict:
    s = resolve(ctx, setting)
    result, net = exact_bound(ctx, setting, n_images)
    summary = result.summary
    engine = summary.network_evals / summary.seconds
    alone = network_rate(ctx, net, s["batch"])["per_s"]
    return {**s, "channels_last_from": "flag" if setting.get("channels_last") is not None
            else f"default for {ctx.device.type}", "batch_from": "flag" if setting.get("batch") else "default",
            "images": n_images, "T": summary.T, "network_evals": summary.network_evals, "seconds": summary.seconds,
            "evals_per_s": engine, "network_alone_evals_per_s": alone,
            # the engine's own work (noise, float64 terms, checks, the host waiting) per unit of network time
            "engine_share": alone / engine - 1.0, "total_bpd": summary.total_bpd}


def bound_speed(ctx) -> dict:
    out = ctx.partial
    network = ctx.prior("network") or {}
    settings = [("defaults", {})]
    keys = ("precision", "channels_last", "batch")
    fastest = network.get("fastest_uncompiled")
    if fastest:
        settings.append(("fastest", {k: fastest[k] for k in keys}))
    no_bf16 = [r for r in network.get("rows", []) if r.get("status") == "ok" and r["precision"] != "bf16"
               and not r.get("compile")]
    if no_bf16:
        settings.append(("fastest fp32/tf32", {k: max(no_bf16, key=lambda r: r["evals_per_s"])[k] for k in keys}))
    out["note"] = ("settings from the network section's fastest uncompiled rows" if fastest
                   else "the network section has no result: defaults only")
    rows = out["rows"] = []
    for name, setting in settings:
        if ctx.left() < 2.0:
            rows.append({"setting": name, **setting, "status": "skipped: the section's budget was spent"})
            continue
        rows.append(guarded({"setting": name, **setting}, partial(_speed_row, ctx, setting, ctx.plan.bound_images)))
    return dict(out)


def paired_difference(ref: np.ndarray, var: np.ndarray) -> dict:
    """Per-image terms (N, T+1) of a variant against the reference: the paired difference of the totals
    with its standard error, and where the terms differ."""
    d = var.sum(1) - ref.sum(1)
    per_term = np.abs(var - ref).max(0)
    differing = np.flatnonzero(per_term > 0)
    n = len(d)
    return {"total_bpd": float(var.sum(1).mean()), "paired_diff_mean": float(d.mean()),
            "paired_diff_stderr": float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "max_abs_image_diff": float(np.abs(d).max()), "decoder_diff_mean": float((var[:, 0] - ref[:, 0]).mean()),
            "max_abs_term_diff": float(per_term.max()), "term_of_max": int(per_term.argmax()),
            "terms_differing": int(len(differing)), "first_terms_differing": differing[:10].tolist(),
            "identical": bool(np.array_equal(ref, var))}


def _variant_cost(ctx, setting: dict, ref_terms: np.ndarray) -> dict:
    return paired_difference(ref_terms, exact_bound(ctx, setting, ctx.plan.bound_images)[0].per_image.terms)


PRECISION_VARIANTS = (
    ("tf32", {"precision": "tf32", "channels_last": False}),
    ("bf16", {"precision": "bf16", "channels_last": False}),
    ("channels-last", {"precision": "fp32", "channels_last": True}),
    ("compile", {"precision": "fp32", "channels_last": False, "compile": "default"}),
)


def precision_cost(ctx) -> dict:
    out, plan = ctx.partial, ctx.plan
    reference = {"precision": "fp32", "channels_last": False}
    ref = exact_bound(ctx, reference, plan.bound_images)[0]
    ref_terms = ref.per_image.terms
    out.update(reference={**resolve(ctx, reference), "total_bpd": ref.summary.total_bpd}, images=plan.bound_images,
               T=ref.summary.T, seed=0, note="each variant changes one thing against the fp32 reference; the "
                                             "same images and noise (seed 0), the default pairs per call")
    rows = out["rows"] = []
    for name, setting in PRECISION_VARIANTS:
        s = resolve(ctx, setting)
        compiled_ready = ("compiled", s["precision"], s["channels_last"], s["batch"]) in ctx.cache
        if s["compile"] and not plan.compile:
            rows.append({"variant": name, "status": f"skipped: the {plan.name} plan does not compile"})
        elif (s["compile"] and not compiled_ready and ctx.left() < plan.compile_min_left_s) or ctx.left() < 2.0:
            rows.append({"variant": name, "status": "skipped: the section's budget was spent"})
        else:
            rows.append(guarded({"variant": name, **s}, partial(_variant_cost, ctx, setting, ref_terms)))
    return dict(out)


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    per_term = np.abs(a - b).max(0)
    differing = np.flatnonzero(per_term > 0)
    return {"identical": bool(np.array_equal(a, b)), "max_abs_term_diff": float(per_term.max()),
            "terms_differing": int(len(differing)), "first_terms_differing": differing[:10].tolist(),
            "max_abs_total_diff": float(np.abs(a.sum(1) - b.sum(1)).max())}


def kill_and_resume(ctx) -> dict:
    """`ddpm-bench nll` in its own process, killed (SIGKILL) once its first shard is written, then resumed
    by the library on the same --out; against an uninterrupted run of the same settings."""
    plan = ctx.plan
    n, batch, shard = plan.resume_images, plan.invariance_batches[0], plan.resume_shard
    whole, killed = ctx.work / "resume_whole", ctx.work / "resume_killed"
    for folder in (whole, killed):
        shutil.rmtree(folder, ignore_errors=True)
    net = ctx.models.network()
    run = {"images": n, "batch": batch, "shard_size": shard}
    reference = ddpm_bench.bound(net, plan.data, num_images=n, batch_size=batch, shard_size=shard, out=whole)
    cmd = [sys.executable, "-m", "ddpm_bench", "nll", "--ckpt", str(ctx.models.ckpt), "--data", plan.data,
           "--num-images", str(n), "--batch-size", str(batch), "--shard-size", str(shard), "--device",
           ctx.device.type, "--no-progress", "--out", str(killed)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    shards = killed / "shards"
    while proc.poll() is None and not any(shards.glob("nll_*.npz")) and ctx.left() > 1.0:
        time.sleep(0.01)
    interrupted = proc.poll() is None
    if interrupted:
        proc.kill()
    stderr = proc.communicate()[1]
    run.update(killed_after_s=time.monotonic() - t0, killed=interrupted,
               shards_at_kill=len(list(shards.glob("nll_*.npz"))), shards_total=math.ceil(n / shard))
    if not interrupted and proc.returncode != 0:
        raise RuntimeError(f"nll exited {proc.returncode}: {(stderr.strip().splitlines() or ['?'])[-1]}")
    resumed = ddpm_bench.bound(net, plan.data, num_images=n, batch_size=batch, shard_size=shard, out=killed)
    if not interrupted:
        note = "not interrupted: the run finished before a shard was seen"
    elif run["shards_at_kill"] == 0:
        note = "killed before its first shard was written (the section's budget ran out first): resumed from nothing"
    else:
        note = "killed after its first shard; resumed by ddpm_bench.bound on the same --out"
    run.update(_compare(reference.per_image.terms, resumed.per_image.terms), note=note)
    return run


def invariance(ctx) -> dict:
    out, plan = ctx.partial, ctx.plan
    images = plan.invariance_images
    b1, b2 = plan.invariance_batches
    net = ctx.models.network()
    terms = {b: ddpm_bench.bound(net, ctx.images(images), batch_size=b).per_image.terms for b in (b1, b2)}
    out["batch_sizes"] = {"images": images, "batches": [b1, b2], "setting": "defaults", **_compare(terms[b1], terms[b2])}
    out["kill_and_resume"] = kill_and_resume(ctx) if ctx.left() > 5.0 else {"status": "skipped: the section's budget "
                                                                                      "was spent"}
    return dict(out)
