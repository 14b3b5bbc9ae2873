"""`ddpm-bench reproduce --dry-run`: the work of every stage and an ETA from short timed probes.

Every probe times the real operation on the recipe's network (the checkpoint's with --ckpt, otherwise a
freshly initialised one: the weights do not change the time) at the batch size the stage will use, as
the median of 3 calls after a warm-up call: one training step (forward, backward, Adam), one sampling
step, one step of the bound engine (noise, network, float64 terms, `nll.probe_seconds_per_eval`) and one
batch of the FID feature extractor. The ETA is the probe times the number of calls; it leaves out data
loading, checkpoints and the metrics themselves.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ddpm_bench.config import RunConfig
from ddpm_bench.data import ImageSet, load_images
from ddpm_bench.dry_run import DryRun, DryRunStage
from ddpm_bench.errors import UserError
from ddpm_bench.estimators.continuous import Continuous
from ddpm_bench.estimators.ode import Ode
from ddpm_bench.identity import model_identity
from ddpm_bench.jobs.fid import reference_is_cached
from ddpm_bench.jobs.nll import probe_seconds_per_eval
from ddpm_bench.jobs.sample import DEFAULT_BATCH_SIZE as SAMPLE_BATCH_SIZE
from ddpm_bench.losses import training_loss
from ddpm_bench.models.formats import load_network
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.registry import build_model
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import Execution, Network
from ddpm_bench.probe import REPEATS, timed
from ddpm_bench.variational_bound import default_pairs_per_call


def _network(cfg: RunConfig, ckpt: str | None, execution: Execution) -> Network:
    """The checkpoint's network, or the recipe's freshly initialised (the weights do not change the time)."""
    if ckpt is not None:
        return load_network(ModelSpec(ckpt=ckpt), execution)
    m = cfg.model
    module = build_model(cfg.to_dict()["model"])
    ident = model_identity("probe", None, None, cfg.diffusion, cfg.to_dict()["model"],
                           "recipe (untrained, for timing only)")
    model = LoadedModel(backbone=module, diffusion=cfg.diffusion, identity=ident, provenance={"kind": "probe"},
                        image_shape=(m.in_channels, m.image_size, m.image_size), module=module)
    return Network(model, execution)


def _images(src: str, data_root: str | None, n: int, shape: tuple[int, int, int]) -> tuple[ImageSet, int | None]:
    """The first `n` images of `src` and its size, or zeros of the model's shape and None when the data
    is not here."""
    try:
        data = load_images(src, data_root, None)
        return ImageSet(data.images[:n], data.index[:n], data.source, data.sha256), len(data)
    except UserError:
        c, h, w = shape
        return ImageSet(np.zeros((n, h, w, c), np.uint8), np.arange(n, dtype=np.int64), "zeros", ""), None


def _train_step_seconds(cfg: RunConfig, device: torch.device) -> float:
    tc, d, m = cfg.training, cfg.diffusion, cfg.model
    model = build_model(cfg.to_dict()["model"]).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    s = d.schedule().to(device)
    x0 = torch.zeros(tc.batch_size, m.in_channels, m.image_size, m.image_size, dtype=torch.float64, device=device)
    i = torch.randint(0, d.T, (tc.batch_size,), device=device)
    noise = torch.randn_like(x0)

    def step() -> None:
        out = model(x0.to(torch.float32), i)
        loss = training_loss(tc.objective, d, s, out, x0, x0, i, noise, tc.decoder_cdf).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, device)


def _fid_batch_seconds(name: str, batch: int, shape: tuple[int, int, int], device: torch.device) -> float:
    from ddpm_bench.metrics.extractors import resolve_extractor
    from ddpm_bench.metrics.torch_fidelity_backend import extract_features

    extractor = resolve_extractor(name)
    fe = extractor.create(device)
    c, h, w = shape
    images = np.zeros((batch, h, w, c), np.uint8)
    return timed(lambda: extract_features(images, extractor, device, batch, "probe", network=fe), device)


def reproduce_eta(cfg: RunConfig, ckpt: str | None, device: str, data_root: str | None = None) -> DryRun:
    """Every stage's work and probe ETA, in the order the run does them (UserError when a stage could not
    run: the real run would fail there, after the stages before it)."""
    ev, T = cfg.evaluation, cfg.diffusion.T
    steps = ev.sample.options.steps or T
    num, sample_batch = ev.sample.num, ev.sample.execution.batch_size or SAMPLE_BATCH_SIZE
    sampler_net = _network(cfg, ckpt, ev.sample.execution.execution(device))
    nll_net = _network(cfg, ckpt, ev.nll.execution.execution(device))
    device = nll_net.device
    shape = nll_net.image_shape
    nll_batch = ev.nll.execution.batch_size or default_pairs_per_call(device, shape or (3, 32, 32))
    draws = ev.nll.options.draws
    rows: list[tuple[str, str, float | None]] = []
    unable: list[str] = []
    if ckpt is None:
        sec = _train_step_seconds(cfg, device)
        rows.append(("train", f"{cfg.training.steps} steps x batch {cfg.training.batch_size}: {sec:.3g} s per step",
                     sec * cfg.training.steps))
    b = min(sample_batch, num)
    x = torch.zeros(b, *shape, device=device)
    i = torch.full((b,), T - 1, dtype=torch.int64, device=device)
    with torch.inference_mode():
        sec = timed(lambda: sampler_net(x, i), device)
    calls = math.ceil(num / b) * steps
    rows.append(("sample", f"{num} samples x {steps} steps = {num * steps} network evaluations "
                           f"({calls} calls of {b}: {sec:.3g} s each)", sec * calls))
    per_eval = None  # one probe of the engine serves both splits: same network, same pairs per call
    gap_rows: list[tuple[str, str, float | None]] = []  # after both bounds, as the run does them
    for name, src, n in (("nll train", cfg.training.data, ev.nll.train_images),
                         ("nll test", ev.test_data, ev.nll.test_images)):
        probe, size = _images(src, data_root, min(nll_batch, n or nll_batch), shape)
        if per_eval is None:
            per_eval = probe_seconds_per_eval(nll_net, probe, nll_batch)
        count = n or size
        if count is None:
            rows.append((name, f"all images of {src} (not here to count) x {T} terms x {draws} draw(s): "
                               f"{per_eval * 1e3:.3g} ms per evaluation", None))
            continue
        evals = count * T * draws
        rows.append((name, f"{count} images x {T} terms x {draws} draw(s) = {evals} network evaluations "
                           f"({per_eval * 1e3:.3g} ms each)", per_eval * evals))
        if ev.nll.gap_terms:  # the gap's importance-sampled bound of this split (proposal from nll test)
            gap_count = ev.nll.gap_images or _images(src, data_root, 1, shape)[1]
            K = ev.nll.gap_terms
            if gap_count is None:
                gap_rows.append((f"gap {name}", f"all images of {src} (not here to count) x (1 + {K}) terms", None))
            else:
                gap_rows.append((f"gap {name}", f"{gap_count} images x (1 + {K} drawn) terms = {gap_count * (K + 1)} "
                                                f"network evaluations (nll --terms {K})", per_eval * gap_count * (K + 1)))
    rows += gap_rows
    ode_images = {"ode train": (cfg.training.data, ev.ode.train_images), "ode test": (ev.test_data, ev.ode.test_images)}
    if any(n for _, n in ode_images.values()):  # one probe solve serves both splits
        ode_net = _network(cfg, ckpt, ev.ode.execution.execution(device))
        estimator = Ode(ev.ode.options)
        probe, _ = _images(ev.test_data, data_root, 2, shape)
        per_image = estimator.probe_cost(ode_net, probe, ev.ode.execution.batch_size or 8)
        for name, (src, n) in ode_images.items():
            if n:
                evals, what = estimator.cost(n, T)
                rows.append((name, f"{n} images of {src} x {what}: {per_image:.3g} s per image", per_image * n))
    continuous = Continuous(ev.continuous.options)
    for name, src, n in (("continuous train", cfg.training.data, ev.continuous.train_images),
                         ("continuous test", ev.test_data, ev.continuous.test_images)):
        if n:  # a network evaluation per gamma draw, timed as the bound engine's
            evals, what = continuous.cost(n, T)
            rows.append((name, f"{n} images of {src} x {what} = {evals} network evaluations", per_eval * evals))
    opts = replace(ev.fid.options, ref=ev.fid.options.ref or cfg.training.data, data_root=data_root)
    ref, extractor = opts.ref, opts.feature_extractor
    n_ref = _images(ref, data_root, 1, shape)[1]
    try:
        per_image = _fid_batch_seconds(extractor, 16, shape, device) / 16
        cached = reference_is_cached(opts)
        if cached:
            ref_part, images = f"the reference statistics of {ref} (cached)", num
        elif n_ref:
            ref_part, images = f"{n_ref} of {ref} (not cached yet)", num + n_ref
        else:
            ref_part, images = f"those of {ref} (not here to count, not in the ETA)", num
        rows.append(("fid", f"{extractor} features of {num} samples and {ref_part}: {per_image * 1e3:.3g} ms per "
                            "image", per_image * images))
    except UserError as e:
        rows.append(("fid", f"cannot run: {e}", None))
        unable.append(f"stage fid cannot run: {e}")
    total = sum(r[2] for r in rows if r[2] is not None)
    origin = f"checkpoint {ckpt}" if ckpt else "the recipe's network, freshly initialised"
    lines = [f"dry run on {device} ({origin}; probes: median of {REPEATS} calls after a warm-up):"]
    lines += [f"  {stage:10s} {what}" + (f" -> ETA {_duration(eta)}" if eta is not None else "")
              for stage, what, eta in rows]
    lines.append(f"  total ETA {_duration(total)} (stages without an ETA not included)")
    if unable:  # the real run would fail there, after the stages before it: say so now
        raise UserError("; ".join(unable))
    return DryRun("reproduce", str(device), tuple(DryRunStage(stage, what, None, eta) for stage, what, eta in rows),
                  tuple(lines))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
