"""The importance-sampled bound (`nll --terms K`): per image L_T in closed form, L_0 evaluated, and K of the
T - 1 KL terms drawn from a proposal q fixed before the run, each weighted by 1 / (K q(k)): an unbiased
estimate of the exact bound's expectation (ddpm_bench.variational_bound.estimate_bound). q comes from an exact nll
output with the same T (`--proposal`; of this model or another), else from an exact pilot on the first PILOT_IMAGES images, kept in
OUT/proposal.npz so that a resume does not run it again; its cost is counted in `network_evals` and
`seconds`."""

from __future__ import annotations

import time
from dataclasses import fields

import numpy as np
import torch

from ddpm_bench import distributed, run_dir
from ddpm_bench.arguments import given, named
from ddpm_bench.data import ImageSet
from ddpm_bench.errors import UserError
from ddpm_bench.estimators.base import Progress
from ddpm_bench.estimators.exact import Exact, bound_output, term_arrays
from ddpm_bench.identity import sha256_json
from ddpm_bench.network import Network
from ddpm_bench.outputs import ImportanceSummary, NllOutput
from ddpm_bench.variational_bound import (
    BoundOptions,
    ImportanceOptions,
    compute_bound,
    estimate_bound,
    term_proposal,
)

PILOT_IMAGES = 4  # images of the exact pilot that sets q without `--proposal`
PROPOSAL_FILE = "proposal.npz"  # the pilot's q and seconds, kept for a resume (items: the KL terms 1..T-1)
RULE = "rms of the exact terms over images, 5% uniform"


class Importance(Exact):
    NAME = "importance"
    OPTIONS = ImportanceOptions
    SELECT = "terms"
    SHARD_KEYS = ("terms", "mse", "seconds", "drawn")
    RATE_DISTORTION = False
    SUMMARY = ImportanceSummary

    def __init__(self, options: ImportanceOptions):
        super().__init__(options)
        self.source: dict = {}  # where q comes from (part of the run's identity)
        self.prior = None  # the --proposal output
        self.q: np.ndarray | None = None  # (T-1,) float64
        self._pilot_seconds = 0.0
        self._T = 0

    def check(self, network: Network, images: ImageSet) -> None:
        super().check(network, images)
        T = network.diffusion.T
        if self.options.terms > T - 1:
            raise UserError(f"{given('terms', self.options.terms)}: more than the T - 1 = {T - 1} KL terms; leave "
                            f"{named('terms')} out for every term")

    def prepare(self, network: Network, images: ImageSet) -> dict:
        """Where q comes from: an exact nll output with the same T (by its run id; of this model, or of another,
        such as an earlier checkpoint of a training run: any q mixed with the uniform keeps the estimate
        unbiased, only its variance depends on q), or the exact pilot on the first images (q is then a pure
        function of the model, the images and the seed)."""
        T = self._T = network.diffusion.T
        if self.options.proposal is None:
            n = min(PILOT_IMAGES, len(images))
            self.source = {"from": "pilot", "images": images.index[:n].tolist(), "seed": self.options.seed}
            return {"proposal": self.source}
        proposal = self.options.proposal
        prior = proposal if isinstance(proposal, NllOutput) else Exact.read(proposal)
        what = given("proposal", proposal if isinstance(proposal, str) else prior)
        if prior.summary.estimator != Exact.NAME or not prior.per_image.exact:
            raise UserError(f"{what}: is an output of the {prior.summary.estimator!r} estimator; the proposal comes "
                            "from an exact bound (every term of every image)")
        if prior.summary.T != T:
            raise UserError(f"{what}: needs an exact nll output (every term) with T = {T}")
        self.prior = prior
        self.source = {"from": "nll output", "run_id": prior.summary.run_id, "n_images": prior.summary.n_images,
                       "model": prior.summary.model_sha256}
        return {"proposal": self.source}

    def identity(self) -> dict:
        """The options without the proposal (its run id is in `prepare`'s part)."""
        return {f.name: getattr(self.options, f.name) for f in fields(self.options) if f.name != "proposal"}

    def setup(self, network: Network, images: ImageSet, run, batch_size: int) -> None:
        """q, the same bytes on every rank: from the --proposal output, else the pilot's, computed by rank 0
        into OUT/proposal.npz (checked like a shard) and read back by every rank."""
        if self.prior is not None:
            self.q = term_proposal(self.prior.per_image.terms)
            return
        T = network.diffusion.T
        terms = np.arange(1, T, dtype=np.int64)
        if run is None:
            self.q, self._pilot_seconds = self._pilot(network, images, batch_size)
            return
        with run_dir.phase():
            if distributed.is_main() and not run.shard_is_valid(PROPOSAL_FILE, terms, ("q", "seconds")):
                q, seconds = self._pilot(network, images, batch_size)
                run.write_shard(PROPOSAL_FILE, terms, q=q, seconds=np.full(T - 1, seconds / (T - 1)))
        with run_dir.phase():
            got = run.read_shard(PROPOSAL_FILE, terms, ("q", "seconds"))
        self.q, self._pilot_seconds = got["q"], float(got["seconds"].sum())

    def _pilot(self, network: Network, images: ImageSet, batch_size: int) -> tuple[np.ndarray, float]:
        n = min(PILOT_IMAGES, len(images))
        t0 = time.perf_counter()
        x = torch.from_numpy(images.images[:n]).permute(0, 3, 1, 2)
        opts = BoundOptions(seed=self.options.seed, clip=self.options.clip, decoder_cdf=self.options.decoder_cdf)
        pilot = compute_bound(network, x, torch.from_numpy(images.index[:n]), opts, batch_size=batch_size)
        return term_proposal(pilot.terms.cpu().numpy()), time.perf_counter() - t0

    def evaluations_per_image(self, T: int) -> int:
        return self.options.terms + 1

    def cost(self, n_images: int, T: int) -> tuple[int, str]:
        K = self.options.terms
        evals, what = n_images * (K + 1), f"(1 + {K} drawn) terms"
        if self.options.proposal is None:
            pilot = min(PILOT_IMAGES, n_images)
            evals, what = evals + pilot * T, what + f" + a pilot of {pilot} images x {T} terms"
        return evals, what

    @classmethod
    def alternative(cls, T: int) -> Importance:
        return cls(ImportanceOptions(terms=min(25, max(1, T - 1))))

    def label(self) -> str:
        return f"--terms {self.options.terms}" + (" (pilot included)" if self.options.proposal is None else "")

    @classmethod
    def summary_lines(cls, summary: ImportanceSummary) -> list[str]:
        return [*super().summary_lines(summary),
                f"  estimated from L_0 and {summary.terms_per_image} drawn KL terms per image ({summary.proposal['from']})"]

    def setup_evaluations(self) -> int:
        return len(self.source["images"]) * self._T if self.source.get("from") == "pilot" else 0

    def setup_seconds(self) -> float:
        return self._pilot_seconds

    def compute(self, network: Network, images: torch.Tensor, index: torch.Tensor, *, batch_size: int,
                progress: Progress | None) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        result = estimate_bound(network, images, index, self.options, self.q, batch_size=batch_size,
                                progress=progress)
        return term_arrays(result, time.perf_counter() - t0)

    def finish(self, merged: dict[str, np.ndarray], common: dict) -> NllOutput:
        proposal = {**self.source, "network_evals": self.setup_evaluations(), "seconds": self._pilot_seconds,
                    "sha256": sha256_json(self.q.tolist()), "rule": RULE}
        return bound_output(merged, common, self.options, self.SUMMARY, terms_per_image=self.options.terms,
                            proposal=proposal)
