"""The bound while training (`[training.eval]`): every `every` steps, and at the end, rank 0 evaluates the
EMA weights with the importance-sampled bound (`nll --terms K`, the pilot included) on a fixed subset of a
held-out split, in memory, and logs it to RUN_DIR/eval.csv beside the loss. The weights, identity,
estimator, images and noise are those of `ddpm-bench nll --ckpt CHECKPOINT --terms K --seed S --data D
--num-images N` on the checkpoint of that step, so the curve is the command's numbers, not another's.

A step's checkpoint and its row are one unit: a run resumed from a checkpoint whose evaluation is missing
from eval.csv (a kill between the two, or a row dropped as cut off or changed) evaluates it first, from that
checkpoint's EMA weights, as the run would have; each row carries its content hash (`row_sha256`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

from ddpm_bench.config import RunConfig
from ddpm_bench.data import DataSpec, ImageSet
from ddpm_bench.errors import ConfigError
from ddpm_bench.identity import model_identity, state_dict_sha256
from ddpm_bench.jobs.nll import NllJob, run_nll
from ddpm_bench.messages import note
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.network import Execution, Network
from ddpm_bench.outputs import NllOutput
from ddpm_bench.run_dir import RunOptions
from ddpm_bench.step_log import ROW_SHA256, hashed_row, logged_steps, trim_step_log
from ddpm_bench.training import Trainer
from ddpm_bench.variational_bound import ImportanceOptions

EVAL_LOG = "eval.csv"
EVAL_HEADER = f"step,bpd,bpd_stderr,n_images,terms,network_evals,seconds,{ROW_SHA256}"


class TrainingBound:
    """The held-out images and the settings of `[training.eval]`; `due(step)` and `evaluate`."""

    def __init__(self, cfg: RunConfig, config: dict, run_dir: Path, origin: str):
        te = cfg.training.eval
        self.cfg, self.config, self.every = cfg, config, te.every
        self.path = Path(run_dir) / EVAL_LOG
        self.options = ImportanceOptions(terms=te.terms, seed=te.seed)
        source = te.data or cfg.evaluation.test_data
        self.images: ImageSet | None = None
        if self.every:
            self.images = DataSpec(source, cfg.training.data_root or None, te.images).load()
            m = cfg.model
            if self.images.shape != (m.in_channels, m.image_size, m.image_size):
                raise ConfigError(f"{origin}: training.eval.data {source} holds images of shape (C, H, W) = "
                                  f"{self.images.shape}, but the model takes {(m.in_channels, m.image_size, m.image_size)}")

    def due(self, step: int, done: bool) -> bool:
        return bool(self.every) and (step % self.every == 0 or done)

    def evaluate(self, trainer: Trainer, ema_state: dict | None = None, step: int | None = None) -> NllOutput:
        """The bound of the EMA weights at the trainer's step (a copy: training is untouched), or of
        `ema_state`, the EMA weights of the checkpoint of `step`."""
        ema = copy.deepcopy(trainer.ema.model)
        if ema_state is not None:
            ema.load_state_dict(ema_state)
        step = trainer.step if step is None else step
        mcfg = self.config["model"]
        ident = model_identity("ckpt", "ema", state_dict_sha256(ema.state_dict()), self.cfg.diffusion, mcfg,
                               f"training step {step}")
        model = LoadedModel(backbone=ema, diffusion=self.cfg.diffusion, identity=ident,
                            provenance={"kind": "ckpt", "weights": "ema", "training_step": step},
                            image_shape=(mcfg["in_channels"], mcfg["image_size"], mcfg["image_size"]), module=ema,
                            config=self.config)
        network = Network(model, Execution(device=str(trainer.device)))
        return run_nll(NllJob(network, self.images, self.options, run=RunOptions(progress=False)))

    def catch_up(self, trainer: Trainer, checkpoints: list[Path], total_steps: int,
                 load: Callable[[Path], dict]) -> None:
        """Evaluate every kept checkpoint of an evaluation step, up to the trainer's, that has no row in
        eval.csv (a kill after the checkpoint and before its row, or a row dropped by `trim`): from that
        checkpoint's EMA weights (`load(path)` reads and checks it; the trainer's own for its step), the
        numbers the run would have logged. Rows stay in the order of their steps."""
        if not self.every:
            return
        have = logged_steps(self.path)
        added = False
        for path in checkpoints:
            step = checkpoint_step(path)
            if step is None or step > trainer.step or step in have or not self.due(step, step == total_steps):
                continue
            ema = None if step == trainer.step else load(path)["ema"]
            t0 = time.perf_counter()
            output = self.evaluate(trainer, ema, step)
            self.log(step, output, time.perf_counter() - t0)
            added = True
        if added:
            trim_step_log(self.path, EVAL_HEADER, trainer.step)  # in the order of the steps

    def log(self, step: int, output: NllOutput, seconds: float) -> str:
        s = output.summary
        se = "" if s.total_bpd_stderr is None else f"{s.total_bpd_stderr:.17g}"
        with open(self.path, "a") as f:  # one write: a kill leaves a row cut off, dropped with its hash
            f.write(hashed_row(f"{step},{s.total_bpd:.17g},{se},{s.n_images},{self.options.terms},"
                               f"{s.network_evals},{seconds:.4g}") + "\n")
        shown = f"{s.total_bpd:.4f}" + (f" +- {s.total_bpd_stderr:.4f}" if s.total_bpd_stderr is not None else "")
        note(f"step {step}: bound ~{shown} bits/dim on {s.n_images} images of {s.data} "
             f"(terms {self.options.terms}, EMA weights)")
        return shown

    def trim(self, step: int) -> None:
        """Keep the whole, unchanged rows up to `step` (those after the checkpoint a run resumes from are
        evaluated again, and those dropped by `catch_up` when their checkpoint is kept)."""
        if self.every:
            trim_step_log(self.path, EVAL_HEADER, step)


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint file of a training run (`TrainLayout.checkpoint`), None for another name."""
    digits = path.stem.removeprefix("ckpt_")
    return int(digits) if digits.isdigit() and path.stem.startswith("ckpt_") else None


def timed_evaluation(bound: TrainingBound, trainer: Trainer) -> str:
    t0 = time.perf_counter()
    output = bound.evaluate(trainer)
    return bound.log(trainer.step, output, time.perf_counter() - t0)
