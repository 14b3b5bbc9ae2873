"""The exact variational bound (`nll`, the default): every term of every image, `draws` draws each
(ddpm_bench.variational_bound.compute_bound); its per-image parts are the (N, T + 1) term table and the x0 errors."""

from __future__ import annotations

import time
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np
import torch

from ddpm_bench.arguments import say
from ddpm_bench.errors import UserError
from ddpm_bench.estimators.base import Estimator, Progress
from ddpm_bench.network import Network
from ddpm_bench.outputs import BoundSummary, NllOutput, NllSummary, PerImage, stderr_of_mean
from ddpm_bench.variational_bound import BoundOptions, BoundTerms, compute_bound


class Exact(Estimator):
    NAME = "exact"
    OPTIONS = BoundOptions
    SHARD_KEYS = ("terms", "mse", "seconds")
    RATE_DISTORTION = True
    SUMMARY = BoundSummary
    PER_IMAGE = PerImage

    def check(self, network: Network, images) -> None:
        """The discrete bound needs a model of discrete steps."""
        c = network.convention
        if c.continuous:
            raise UserError(f"model {network.identity.origin} takes a continuous noise level ({c.noise_input!r}): "
                            "the discrete bound has no steps to evaluate it at; " +
                            say("use --continuous (the continuous-time bound) or --ode",
                                "use options=ContinuousOptions() (the continuous-time bound) or OdeOptions()"))

    def evaluations_per_image(self, T: int) -> int:
        return T * self.options.draws

    def cost(self, n_images: int, T: int) -> tuple[int, str]:
        return n_images * T * self.options.draws, f"{T} terms x {self.options.draws} draw(s)"

    def label(self) -> str:
        return "the exact bound (without --terms)"

    @classmethod
    def alternative(cls, T: int) -> Exact:
        return cls(BoundOptions())

    @classmethod
    def summary_lines(cls, summary: BoundSummary) -> list[str]:
        se = summary.total_bpd_stderr
        return [f"  total bound   {summary.total_bpd:.5f} bits/dim" + (f" +- {se:.5f}" if se is not None else ""),
                f"  L_T (prior)   {summary.prior_bpd:.3e}",
                f"  L_1..L_T-1    {summary.kl_bpd:.5f}",
                f"  L_0 (decoder) {summary.decoder_bpd:.5f}",
                f"  rate L_1..L_T {summary.rate_bpd:.5f}"]

    def compute(self, network: Network, images: torch.Tensor, index: torch.Tensor, *, batch_size: int,
                progress: Progress | None) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        result = compute_bound(network, images, index, self.options, batch_size=batch_size, progress=progress)
        return term_arrays(result, time.perf_counter() - t0)

    def finish(self, merged: dict[str, np.ndarray], common: dict) -> NllOutput:
        return bound_output(merged, common, self.options, self.SUMMARY)

    @classmethod
    def comparable(cls, summary: NllSummary) -> dict:
        return {**super().comparable(summary), "clip": summary.clip, "decoder_cdf": summary.decoder_cdf}


def term_arrays(result: BoundTerms, seconds: float) -> dict[str, np.ndarray]:
    """A shard's arrays from the engine's result: terms, x0 errors, how often each term was drawn (when
    sampled), and the shard's seconds spread over its images."""
    n = result.terms.shape[0]
    drawn = {} if result.drawn is None else {"drawn": result.drawn.cpu().numpy()}
    return {"terms": result.terms.cpu().numpy(), "mse": result.mse.cpu().numpy(),
            "seconds": np.full(n, seconds / n), **drawn}


def bound_output(merged: dict[str, np.ndarray], common: dict, options: Any, summary_type: type,
                 **fields) -> NllOutput:
    """The bound's outputs from merged term tables; every standard error is over images, so for the
    importance-sampled bound it includes the term-sampling variance (each image's estimate is independent
    of the others')."""
    terms = merged["terms"]  # (N, T + 1)
    total = terms.sum(1)
    rate = terms[:, 1:].sum(1)
    per_image = PerImage(terms=terms, mse=merged["mse"], index=merged["index"], run_id=common["run_id"],
                         drawn=merged.get("drawn"))
    summary = summary_type(
        **common,
        **{name: float(values.mean()) for name, values in per_image.means().items()},  # total and named parts
        total_bpd_stderr=stderr_of_mean(total),
        rate_bpd_stderr=stderr_of_mean(rate),
        decoder_bpd_stderr=stderr_of_mean(terms[:, 0]),
        draws=options.draws,
        clip=options.clip,
        decoder_cdf=options.decoder_cdf,
        bound=options_record(options),
        **fields,
    )
    return NllOutput(None, summary, per_image)


def options_record(options) -> dict:
    """The options as summary.json records them: a proposal given in memory by where it is (its path, or
    its run id), since its content is identified by its run id already."""
    out = {}
    for f in dataclass_fields(options):
        value = getattr(options, f.name)
        if isinstance(value, NllOutput):
            value = str(value.path) if value.path is not None else f"in memory (run_id {value.summary.run_id})"
        out[f.name] = value
    return out
