"""The network alone: evaluations per second of the U-Net through ddpm-bench's network wrapper (`Network`,
as the bound and the sampler call it, under `torch.inference_mode`), by batch size, precision, memory format
and `torch.compile`; its FLOPs counted by `torch.utils.flop_counter` on one forward; the achieved rate as a
fraction of the device's bf16 peak (datasheet) and of a measured bf16 matmul."""

from __future__ import annotations

import time
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.gpu.timing import bf16_peak, guarded, matmul_tflops, throughput
from ddpm_bench.variational_bound import default_pairs_per_call

MAX_COMPILE_BATCH = 1024


def network_inputs(ctx, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs: x (B, C, H, W) float32 noise and network indices (B,) spread over all T."""
    c, h, w = ctx.cfg.model.in_channels, ctx.cfg.model.image_size, ctx.cfg.model.image_size
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, c, h, w, generator=g).to(ctx.device)
    i = torch.randint(0, ctx.cfg.diffusion.T, (batch,), generator=g).to(ctx.device)
    return x, i


def network_rate(ctx, net, batch: int, min_time_s: float | None = None) -> dict:
    """Evaluations per second of `net` at `batch` pairs per call, calls back to back."""
    x, i = network_inputs(ctx, batch)

    def call():
        with torch.inference_mode():
            return net(x, i)

    return throughput(call, batch, ctx.device, ctx.plan.time_per_config_s if min_time_s is None else min_time_s)


def flops_per_eval(ctx, net) -> float:
    """FLOPs of one evaluation (a forward of `flop_batch` inputs counted, divided by the batch)."""
    x, i = network_inputs(ctx, ctx.plan.flop_batch)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x, i)
    return counter.get_total_flops() / ctx.plan.flop_batch


def _row(ctx, flops: float, peak: float | None, matmul: float, **setting) -> dict:
    net = ctx.models.network(setting["precision"], setting["channels_last"], setting.get("compile"))
    row = {}
    if setting.get("compile"):
        t0 = time.perf_counter()
        network_rate(ctx, net, setting["batch"], min_time_s=0.0)  # compiles (and warms up) this batch shape
        row["compile_seconds"] = time.perf_counter() - t0
        ctx.cache[("compiled", setting["precision"], setting["channels_last"], setting["batch"])] = net
    rate = network_rate(ctx, net, setting["batch"])
    tflops = flops * rate["per_s"] / 1e12
    row.update(evals_per_s=rate["per_s"], ms_per_call=rate["ms_per_call"], calls=rate["calls"], tflops=tflops,
               fraction_of_bf16_peak=tflops / peak if peak else None, fraction_of_bf16_matmul=tflops / matmul)
    return row


def _measure_rows(ctx, rows: list, settings: list[dict], flops: float, peak, matmul: float, reserve_s: float) -> None:
    for setting in settings:
        if ctx.left() < reserve_s:
            rows.append({**setting, "status": "skipped: the section's budget was spent"})
            continue
        rows.append(guarded(setting, partial(_row, ctx, flops, peak, matmul, **setting)))


def best(rows: list[dict], **where) -> dict | None:
    """The fastest measured row whose settings match `where`."""
    ok = [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in where.items())]
    return max(ok, key=lambda r: r["evals_per_s"]) if ok else None


def measure(ctx) -> dict:
    plan, out = ctx.plan, ctx.partial
    out["flops_per_eval"] = flops = flops_per_eval(ctx, ctx.models.network("fp32", False))
    out["flops_counted_by"] = f"torch.utils.flop_counter.FlopCounterMode, one forward of {plan.flop_batch} inputs"
    out["bf16_peak"] = peak = bf16_peak(ctx.device)
    out["bf16_matmul"] = matmul = matmul_tflops(ctx.device, plan.matmul_n)
    rows = out["rows"] = []
    compile_reserve = plan.compile_min_left_s + 5.0 if plan.compile else 1.0  # time kept for one compile
    matrix = [{"precision": p, "channels_last": cl, "compile": None, "batch": b}
              for p in plan.precisions for cl in (False, True) for b in plan.batch_sizes]
    _measure_rows(ctx, rows, matrix, flops, peak["tflops"], matmul["tflops"], reserve_s=compile_reserve)
    fastest = best(rows)
    out["best"] = {p: best(rows, precision=p) for p in plan.precisions}
    out["fastest"] = out["fastest_uncompiled"] = fastest
    if fastest is None:
        raise RuntimeError("no setting of the network could be measured")
    if ctx.device.type == "cuda":  # cuDNN's autotuner at the fastest setting (ddpm-bench leaves it off)
        torch.backends.cudnn.benchmark = True
        try:
            setting = {"compile": None, **{k: fastest[k] for k in ("precision", "channels_last", "batch")}}
            out["cudnn_benchmark"] = guarded(setting, partial(_row, ctx, flops, peak["tflops"], matmul["tflops"],
                                                              **setting))
        finally:
            torch.backends.cudnn.benchmark = False
    else:
        out["cudnn_benchmark"] = {"status": "skipped: CUDA only"}
    if not plan.compile:
        out["compile"] = {"status": f"skipped: the {plan.name} plan does not compile (about a minute per batch shape)"}
        return dict(out)
    bf16 = out["best"].get("bf16") or fastest
    # fp32 at nll's defaults first: the precision section measures its bits/dim with this network
    default_batch = default_pairs_per_call(ctx.device, (ctx.cfg.model.in_channels, ctx.cfg.model.image_size,
                                                        ctx.cfg.model.image_size))
    compiled = [{"precision": "fp32", "channels_last": False, "compile": "default", "batch": default_batch},
                {"precision": bf16["precision"], "channels_last": bf16["channels_last"], "compile": "default",
                 "batch": min(bf16["batch"], MAX_COMPILE_BATCH)}]
    _measure_rows(ctx, rows, compiled, flops, peak["tflops"], matmul["tflops"], reserve_s=plan.compile_min_left_s)
    out["best_compiled"] = best(rows, compile="default")
    out["fastest"] = best(rows)
    return dict(out)
