"""Sampling and the ODE likelihood on the device, through the library (`ddpm_bench.sample`, `ddpm_bench.bound`
with `OdeOptions`).

The sampler's cost per step does not depend on how many steps a run takes (one network call on the batch
plus the step's float64 arithmetic), so each batch size is timed over a few respaced steps and the rate of
the 1000-step ancestral and the 100-step DDIM sampler follows from the seconds per step."""

from __future__ import annotations

from functools import partial

import ddpm_bench
from benchmarks.gpu.timing import guarded
from ddpm_bench.estimators.ode import OdeOptions

ANCESTRAL_STEPS, DDIM_STEPS = 1000, 100


def _sample_seconds(net, batch: int, steps: int, sampler: str) -> float:
    result = ddpm_bench.sample(net, batch, steps=steps, sampler=sampler, batch_size=batch)
    return float(result.manifest.seconds)


def _sampler_rate(net, batch: int, sampler: str, steps: int, plan) -> dict:
    _sample_seconds(net, batch, 1, sampler)  # warm-up at this batch shape
    per_step = _sample_seconds(net, batch, plan.sampler_steps, sampler) / plan.sampler_steps
    return {"seconds_per_step": per_step, "evals_per_s": batch / per_step, "samples_per_s": batch / (steps * per_step)}


def sampler_speed(ctx) -> dict:
    out, plan = ctx.partial, ctx.plan
    network = ctx.prior("network") or {}
    fastest = network.get("fastest_uncompiled")
    settings = [("defaults", {"precision": "fp32", "channels_last": None})]
    if fastest:
        settings.insert(0, ("fastest", {"precision": fastest["precision"], "channels_last": fastest["channels_last"]}))
    out["method"] = (f"seconds per step over {plan.sampler_steps} respaced steps after a one-step warm-up at the same "
                     f"batch; samples/s = batch / (steps x seconds per step) for {ANCESTRAL_STEPS} ancestral and "
                     f"{DDIM_STEPS} DDIM steps")
    rows = out["rows"] = []
    for name, setting in settings:
        net = ctx.models.network(**setting)
        for batch in plan.sampler_batches:
            for sampler, steps in (("ancestral", ANCESTRAL_STEPS), ("ddim", DDIM_STEPS)):
                row = {"setting": name, **setting, "channels_last": net.channels_last, "batch": batch,
                       "sampler": sampler, "steps": steps}
                if ctx.left() < 1.0:
                    rows.append({**row, "status": "skipped: the section's budget was spent"})
                    continue
                rows.append(guarded(row, partial(_sampler_rate, net, batch, sampler, steps, plan)))
    return dict(out)


def _ode_row(ctx, net, batch: int, n_images: int, images=None) -> dict:
    options = OdeOptions() if ctx.plan.ode_tolerance is None else \
        OdeOptions(rtol=ctx.plan.ode_tolerance, atol=ctx.plan.ode_tolerance)
    result = ddpm_bench.bound(net, images if images is not None else ctx.images(n_images), options=options,
                              batch_size=batch)
    s = result.summary
    per_image = s.seconds / s.n_images
    return {"rtol": options.rtol, "atol": options.atol, "nfe_mean": s.nfe_mean, "seconds": s.seconds,
            "seconds_per_image": per_image, "seconds_per_nfe_per_image": per_image / s.nfe_mean,
            "total_bpd": s.total_bpd}


def ode_cost(ctx) -> dict:
    """NFE and seconds per image at nll --ode's default tolerance, one image per solve and 64; and the NFE of
    the packaged trained model (an untrained network's NFE says little about a trained one's)."""
    out, plan = ctx.partial, ctx.plan
    out["note"] = ("fp32, nll --ode's defaults (Rademacher probe, Dormand-Prince 5(4)); NFE counts the network "
                   "evaluations of one image (each a forward and a backward)")
    trained = ddpm_bench.load_model("embedded", device=str(ctx.device))
    images = ctx.images(plan.ode_trained_images)
    n = plan.ode_trained_images
    out["trained_model"] = guarded({"model": "embedded (packaged, 1.1M parameters, trained)", "batch": n,
                                    "images": n}, partial(_ode_row, ctx, trained, n, n, images))
    rows = out["rows"] = []
    net = ctx.models.network()
    for batch, n_images in sorted(plan.ode_batches.items(), reverse=True):
        if ctx.left() < 2.0:
            rows.append({"batch": batch, "images": n_images, "status": "skipped: the section's budget was spent"})
            continue
        rows.append(guarded({"batch": batch, "images": n_images}, partial(_ode_row, ctx, net, batch, n_images)))
    return dict(out)
