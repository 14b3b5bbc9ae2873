"""`ddpm-bench train`: run the reference trainer on a recipe, with checkpoints, a CSV log and resume.

RUN_DIR/config.json    the resolved configuration (written first; a rerun must match it)
RUN_DIR/checkpoints/   ckpt_XXXXXXX.pt every `ckpt_every` steps and at the end, the last `keep_last` kept
RUN_DIR/log.csv        step,loss,grad_norm,lr,steps_per_s every `log_every` steps
RUN_DIR/eval.csv       the bound while training (`[training.eval]`, ddpm_bench/jobs/train_eval.py)

Under torchrun (WORLD_SIZE > 1) every process trains on its slice of the global batch through
DistributedDataParallel (NCCL on GPUs, gloo on CPU); only rank 0 writes files.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ddpm_bench import distributed
from ddpm_bench import run_dir as run_dir_lib
from ddpm_bench.arguments import given, named
from ddpm_bench.checkpoint import load_checkpoint, save_checkpoint
from ddpm_bench.config import RESUMABLE_KEYS, RunConfig, load_recipe
from ddpm_bench.data import load_images
from ddpm_bench.errors import CheckpointError, ConfigError, UserError
from ddpm_bench.jobs.train_eval import TrainingBound, timed_evaluation
from ddpm_bench.messages import note, warn
from ddpm_bench.network import resolve_device
from ddpm_bench.outputs import TrainLayout
from ddpm_bench.provenance import environment
from ddpm_bench.run_dir import RunDir
from ddpm_bench.schedule import prior_warning
from ddpm_bench.shards import atomic_write_json, to_json
from ddpm_bench.step_log import trim_step_log
from ddpm_bench.training import Trainer

COMMAND = "train"
DATA_PATH_KEYS = ("training.data", "training.data_root")  # where the images are found, not what they are
LOG_HEADER = "step,loss,grad_norm,lr,steps_per_s"


class TrainingDiverged(UserError):
    """The loss or the gradient became NaN or infinite (usually a too large learning rate)."""


def with_added_keys(config: dict) -> dict:
    """A stored config with the keys added to its sections since it was written, at their defaults: a new
    key's default is the behaviour before it existed (e.g. model.norm_groups = 32), so a run started by an
    earlier version resumes as the same run."""
    defaults = RunConfig().to_dict()
    return {section: ({**defaults[section], **values} if section in defaults and isinstance(values, dict) else values)
            for section, values in config.items()}


def train_identity(config: dict) -> dict:
    """The resolved config (keys added since it was written at their defaults) without the keys a resumed
    run may change (RESUMABLE_KEYS) and without the data's paths (training.data, training.data_root: the
    images are identified by their sha256, which `claim_run_dir` adds): what fixes the parameters every
    step produces."""
    config = with_added_keys(config)
    skip = (*RESUMABLE_KEYS, *DATA_PATH_KEYS)

    def keep(key: str) -> bool:
        return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in skip)

    return {section: {k: v for k, v in values.items() if keep(f"{section}.{k}")}
            for section, values in config.items() if isinstance(values, dict) and keep(f"{section}.")}


def claim_run_dir(run_dir: Path, config: dict, data: dict, force: bool, main: bool = True) -> RunDir:
    """Claim RUN_DIR (lock, run.json) for the training run of `config` on the images `data` (their hash),
    and write the resolved config.json (a resumable key such as training.steps may have changed). Ranks
    other than 0 only follow."""
    identity = {"config": train_identity(config), "data": {"sha256": data["sha256"], "n_images": data["n_images"]}}
    if not main:
        return run_dir_lib.follow(run_dir, COMMAND, identity)
    rd = run_dir_lib.claim(run_dir, COMMAND, identity, force=force,
                           upgrade=lambda old: {**old, "config": train_identity(old.get("config", {}))})
    TrainLayout(run_dir).checkpoints.mkdir(parents=True, exist_ok=True)
    atomic_write_json(TrainLayout(run_dir).config, config)
    return rd


def check_checkpoint_belongs(path: Path, ckpt: dict, config: dict, data: dict) -> None:
    """A checkpoint to resume from must hold this run's config (resumable keys aside) and have been trained
    on this run's images (their sha256)."""
    stored = ckpt.get("config")
    if not isinstance(stored, dict) or train_identity(stored) != train_identity(config):
        diff = run_dir_lib.describe_differences(train_identity(stored) if isinstance(stored, dict) else {},
                                                train_identity(config))
        raise CheckpointError(f"{path}: belongs to another training run ({diff}); refused; move it away or use --force")
    trained_on = ckpt.get("data")
    sha = trained_on.get("sha256") if isinstance(trained_on, dict) else None
    if sha != data["sha256"]:
        raise CheckpointError(f"{path}: was trained on other images (data sha256 {str(sha)[:12]}, this run's "
                              f"{data['sha256'][:12]}); refused; move it away or use --force")


def load_training_images(cfg: RunConfig, origin: str) -> tuple[torch.Tensor, dict]:
    """The training set as a uint8 (N, C, H, W) tensor, checked against the model's image shape."""
    tc, mc = cfg.training, cfg.model
    if not tc.data:
        raise ConfigError(f"{origin}: training.data is not set; give it, e.g. --set training.data=PATH.npz")
    images = load_images(tc.data, tc.data_root or None, tc.num_images or None)
    want = (mc.in_channels, mc.image_size, mc.image_size)
    if images.shape != want:
        raise ConfigError(f"{origin}: training.data {tc.data} holds images of shape (C, H, W) = {images.shape}, "
                          f"but the model takes {want}")
    data = {"source": images.source, "sha256": images.sha256, "n_images": len(images), "notes": list(images.notes)}
    return torch.from_numpy(images.images).permute(0, 3, 1, 2).contiguous(), data


@dataclass(frozen=True)
class TrainResult:
    """A training run after `train`: its directory, the step it reached and its latest checkpoint
    (`ddpm_bench.load_model(result.path)` evaluates it)."""

    path: Path
    step: int
    checkpoint: Path | None

    def to_dict(self) -> dict:
        """What `train` prints when it ends (rank 0 of a torchrun launch)."""
        return {"run_dir": str(self.path), "step": self.step,
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint)}

    def __repr__(self) -> str:
        return f"<TrainResult {self.path}: step {self.step:,}, checkpoint {self.checkpoint}>"


def run_train(recipe: str | None, overrides: list[str], out: str, device: str = "auto", force: bool = False,
              progress: bool = True, data_root: str | None = None) -> TrainResult:
    """Train on `recipe`, or (None) go on with the run in `out` from its own config.json; `data_root` is
    `training.data_root` (a path, not part of the run's identity)."""
    dev = distributed.process_device(resolve_device(device))
    overrides = [*overrides, *([f"training.data_root={json.dumps(data_root)}"] if data_root is not None else [])]
    if recipe is None:
        recipe = str(Path(out) / TrainLayout.CONFIG)
        if not Path(recipe).is_file():
            raise UserError(f"{given('out', out)}: holds no training run ({TrainLayout.CONFIG} missing); give "
                            f"{named('recipe')}")
    origin = f"recipe {recipe}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    cfg = load_recipe(recipe, overrides)
    main = distributed.launch_rank() == 0  # before the process group exists
    if main and not cfg.continuous and (w := prior_warning(cfg.diffusion.schedule())):  # a discrete model's prior
        warn(w)
    config = cfg.to_dict()
    run_dir = Path(out)
    images, data = load_training_images(cfg, origin)
    resuming = claim_run_dir(run_dir, config, data, force, main=main).resumed
    bound = TrainingBound(cfg, config, run_dir, origin) if main else None

    with distributed.process_group(dev):
        rank, world = distributed.rank(), distributed.world_size()
        if world > 1:
            dist.barrier()
        trainer = Trainer(cfg, images.to(dev), cfg.diffusion.schedule(), dev, rank, world)
        ckpts = TrainLayout(run_dir).list_checkpoints()
        if ckpts:
            state = load_checkpoint(ckpts[-1], map_location=dev)
            check_checkpoint_belongs(ckpts[-1], state, config, data)
            trainer.load_state_dict(state)
        if world > 1:
            trainer.ddp_model = torch.nn.parallel.DistributedDataParallel(
                trainer.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if rank == 0:
            trim_step_log(TrainLayout(run_dir).log, LOG_HEADER, trainer.step)
            bound.trim(trainer.step)
            if resuming:
                note(f"resuming {run_dir} at step {trainer.step}")

            def checked(path: Path) -> dict:
                state = load_checkpoint(path, map_location=dev)
                check_checkpoint_belongs(path, state, config, data)
                return state

            bound.catch_up(trainer, ckpts, cfg.training.steps, checked)  # a step's checkpoint and its row: one unit
        _loop(trainer, cfg, config, data, run_dir, rank, world, progress, bound)
    ckpts = TrainLayout(run_dir).list_checkpoints()
    return TrainResult(run_dir, trainer.step, ckpts[-1] if ckpts else None)


def _save(trainer: Trainer, config: dict, data: dict, run_dir: Path, keep_last: int) -> None:
    save_checkpoint(TrainLayout(run_dir).checkpoint(trainer.step), {
        "config": config, **trainer.state_dict(),
        "rng": {"scheme": "every random choice of step s is seeded by (training.seed, s)",
                "seed": trainer.cfg.training.seed},
        "data": data, "provenance": json.loads(to_json(environment()))})  # plain types only
    for old in TrainLayout(run_dir).list_checkpoints()[:-keep_last]:
        old.unlink()


def _loop(trainer: Trainer, cfg: RunConfig, config: dict, data: dict, run_dir: Path, rank: int, world: int,
          progress: bool, bound: TrainingBound | None) -> None:
    from tqdm import tqdm

    tc = cfg.training
    bar = tqdm(total=tc.steps, initial=trainer.step, disable=not progress or rank != 0, desc="train",
               unit="step", dynamic_ncols=True)
    window, t0, start, shown = [], time.perf_counter(), trainer.step, {}
    with bar:
        while trainer.step < tc.steps:
            loss, grad_norm, lr = trainer.train_step()
            if world > 1:
                dist.all_reduce(loss)
                loss /= world
            loss_value, norm_value = float(loss), float(grad_norm)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                ckpts = TrainLayout(run_dir).list_checkpoints()
                last = f"the last good checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint was written yet"
                raise TrainingDiverged(f"loss {loss_value} / gradient norm {norm_value} at step {trainer.step + 1} "
                                       f"is not finite; stopped without updating ({last}); "
                                       "lower training.lr or check the data")
            trainer.apply_update(lr)
            window.append(loss_value)
            bar.update(1)
            done = trainer.step == tc.steps
            if rank == 0 and (trainer.step % tc.log_every == 0 or done):
                now = time.perf_counter()
                rate = len(window) / (now - t0)
                with open(TrainLayout(run_dir).log, "a") as f:
                    f.write(f"{trainer.step},{sum(window) / len(window):.6g},{norm_value:.6g},{lr:.6g},{rate:.4g}\n")
                shown = {**shown, "loss": f"{sum(window) / len(window):.4f}"}
                bar.set_postfix(shown)
                window, t0 = [], now
            if rank == 0 and (trainer.step % tc.ckpt_every == 0 or done):
                _save(trainer, config, data, run_dir, tc.keep_last)
            if rank == 0 and bound.due(trainer.step, done):  # this process's own work: the others wait
                shown = {**shown, "bound": timed_evaluation(bound, trainer)}
                bar.set_postfix(shown)
    if rank == 0:
        last = TrainLayout(run_dir).checkpoint(trainer.step)
        if start == tc.steps:
            note(f"{run_dir} is already at step {tc.steps}; nothing to do")
