"""The reference trainer (`ddpm_bench.training.Trainer`, Algorithm 1 with the paper's optimisation settings)
on the device: steps per second of the recipe at its batch (128), as the trainer runs and in the settings
that keep its algorithm (float32 weights and gradients, the recipe's clipping, EMA and schedule) while
changing only how the hardware rounds or lays out the same float32 computation.

The trainer sets no precision flag of its own, so "as the trainer runs" means torch's defaults (TF32
convolutions on, TF32 matmuls off on an NVIDIA GPU). bf16 autocast is timed for comparison but is not
faithful: it changes the numbers the recipe trains with."""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from benchmarks.gpu.timing import guarded, throughput
from ddpm_bench.training import Trainer

# name -> (cudnn TF32, matmul TF32, channels-last, bf16 autocast, faithful); None keeps torch's default
SETTINGS = (
    ("as the trainer runs (torch defaults)", None, None, False, False, True),
    ("fp32, TF32 off", False, False, False, False, True),
    ("tf32", True, True, False, False, True),
    ("tf32, channels-last", True, True, True, False, True),
    ("bf16 autocast (not faithful)", None, None, False, True, False),
)


@contextlib.contextmanager
def tf32(conv: bool | None, matmul: bool | None):
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if conv is not None:
        torch.backends.cudnn.allow_tf32 = conv
    if matmul is not None:
        torch.backends.cuda.matmul.allow_tf32 = matmul
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def steps_per_s(ctx, images: torch.Tensor, channels_last: bool, bf16: bool) -> dict:
    cfg = ctx.cfg
    trainer = Trainer(cfg, images, cfg.diffusion.schedule(), ctx.device)
    if channels_last:  # the trainer has no flag for it: the benchmark sets the model's memory format
        trainer.model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with autocast:
            _, _, lr = trainer.train_step()
        trainer.apply_update(lr)

    rate = throughput(step, 1, ctx.device, ctx.plan.train_time_s, min_calls=2)
    return {"steps_per_s": rate["per_s"], "steps_timed": rate["calls"], "ms_per_step": rate["ms_per_call"]}


def measure(ctx) -> dict:
    out = ctx.partial
    tc = ctx.cfg.training
    data = ctx.images(min(2000, 50 * tc.batch_size), ctx.plan.train_data)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous().to(ctx.device)
    out.update(batch=tc.batch_size, grad_clip_group=tc.grad_clip_group, ema_decay=tc.ema_decay,
               objective=tc.objective, data=f"{data.source} ({len(data)} images)")
    rows = out["rows"] = []
    for name, conv, matmul, channels_last, bf16, faithful in SETTINGS:
        row = {"setting": name, "cudnn_tf32": conv, "matmul_tf32": matmul, "channels_last": channels_last,
               "bf16_autocast": bf16, "faithful": faithful}
        if ctx.left() < 3.0:
            rows.append({**row, "status": "skipped: the section's budget was spent"})
            continue
        with tf32(conv, matmul):
            rows.append(guarded(row, partial(steps_per_s, ctx, images, channels_last, bf16)))
    ok = [r for r in rows if r["status"] == "ok" and r["faithful"]]
    out["fastest_faithful"] = max(ok, key=lambda r: r["steps_per_s"]) if ok else None
    return dict(out)
