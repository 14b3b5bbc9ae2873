"""Run configurations: frozen dataclasses loaded from TOML recipes, with `--set key=value` overrides.

A recipe has four tables, `[model]` (the U-Net's arguments), `[diffusion]` (`DiffusionConfig`),
`[training]` (`TrainConfig`) and `[evaluation]` (`EvalConfig`, what `reproduce` measures, with one table
per stage, `[evaluation.nll]`, `[evaluation.sample]`, `[evaluation.fid]`, holding that command's typed
options: `BoundOptions`, `SamplerOptions`, `FidOptions`, and how it runs); every key is optional (paper defaults). An unknown table or key, a value
of the wrong type, or an invalid value is a `ConfigError` naming the key and the file or flag. The
resolved configuration (`RunConfig.to_dict()`) is JSON-able and written next to every run.

An optional fifth table, `[noise]`, makes the model a continuous-time one (SPEC section 8): its keys are
`NoiseConvention`'s (noise_input, prediction, schedule, time_scale, gamma_min, gamma_max), and it is trained
with the continuous objective `training.objective = "vdm"`. Without it the model is a discrete DDPM, and
the resolved configuration has no `noise` key (the configuration of every run before it stays as it was).
"""

from __future__ import annotations

import json
import sys
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ddpm_bench.arguments import given
from ddpm_bench.defaults import MAX_GAP
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import ConfigError, UserError
from ddpm_bench.estimators.continuous import ContinuousOptions
from ddpm_bench.estimators.ode import OdeOptions
from ddpm_bench.metrics.protocol import FidOptions
from ddpm_bench.models.unet_config import ModelConfig
from ddpm_bench.network import Execution
from ddpm_bench.noise import check_seed
from ddpm_bench.noise_level import NoiseConvention
from ddpm_bench.run_dir import RunOptions
from ddpm_bench.sampling import SamplerOptions
from ddpm_bench.typecheck import Mismatch, conform, is_int
from ddpm_bench.variational_bound import BoundOptions, ImportanceOptions

# Paper Table 2: "L_simple" (Eq. 14) and "mse" are the unweighted squared error of the network's own
# target (eps, x0 or mu-tilde; the official loss_type "mse"); "L" is the variational bound (Eq. 5).
# "vdm": VDM's continuous-time diffusion loss (Kingma et al. 2021, Eq. 17 as T -> infinity), for a model
# with a continuous [noise] table (losses.vdm_diffusion_loss).
OBJECTIVES = ("L_simple", "mse", "L", "L_vlb", "L_hybrid", "vdm")
CONTINUOUS_OBJECTIVES = ("vdm",)
# how the continuous objective draws t for a batch: VDM's low-discrepancy t_i = (u0 + i / B) mod 1 (its
# default, a lower-variance estimate of the same expectation), or independently uniform
TIME_SAMPLINGS = ("low-discrepancy", "uniform")


@dataclass(frozen=True)
class TrainEval:
    """[training.eval]: the bound of a fixed held-out subset while training: every `every` steps (and at the
    end) the EMA weights' `nll --terms K` of the first `images` images of `data` (evaluation.test_data when
    empty), logged to RUN_DIR/eval.csv beside the loss. Changing it does not change the training run."""

    every: int = 0  # 0: never
    data: str = ""
    images: int = 100
    terms: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every < 0 or self.images < 1:
            raise ValueError(f"training.eval.every must be >= 0 (0: never) and training.eval.images >= 1, got "
                             f"{self.every} and {self.images}")
        ImportanceOptions(terms=self.terms, seed=self.seed)  # UserError naming the setting


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (paper Appendix B and Algorithm 1)."""

    data: str = ""  # a data source; required to train
    data_root: str = ""  # folder with cifar-10-batches-py ("" = $DDPM_BENCH_DATA)
    num_images: int = 0  # 0 = all images of `data`
    steps: int = 800_000
    batch_size: int = 128  # global batch, split evenly over processes
    lr: float = 2e-4
    warmup: int = 5000  # linear learning-rate warm-up steps
    grad_clip: float = 1.0  # global gradient norm clip; 0: none (improved DDPM's trainer)
    # 0: clip the gradient of the whole batch once; G: clip the gradient of each group of G images on its
    # own, then average (the official trainer: each TPU core's 16 of 128 images, tpu_utils)
    grad_clip_group: int = 0
    ema_decay: float = 0.9999
    random_flip: bool = True
    objective: str = "L_simple"
    # the normal CDF of L_0 in the bound objectives (L, L_vlb, L_hybrid): "exact" (log space), or "tanh", the
    # official code's approximation with its 1e-12 floor (zero gradient below it), as the paper's Table 2
    # runs trained
    decoder_cdf: str = "exact"
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 10_000
    keep_last: int = 3  # checkpoints kept in RUN_DIR/checkpoints
    # the continuous objective's draw of t (TIME_SAMPLINGS); "" = its default, low-discrepancy. A discrete
    # objective takes none (and its resolved config has no such key)
    time_sampling: str = ""
    eval: TrainEval = field(default_factory=TrainEval)  # the bound while training ([training.eval])

    def __post_init__(self) -> None:
        _positive(self, ("steps", "batch_size", "log_every", "ckpt_every", "keep_last"))
        check_seed(self.seed, "training.seed")
        from ddpm_bench.gaussian import DECODER_CDF_MODES

        if self.decoder_cdf not in DECODER_CDF_MODES:
            raise ValueError(f"training.decoder_cdf must be one of {', '.join(DECODER_CDF_MODES)}, "
                             f"got {self.decoder_cdf!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"training.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.time_sampling not in ("", *TIME_SAMPLINGS):
            raise ValueError(f"training.time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, "
                             f"got {self.time_sampling!r}")
        if not is_int(self.grad_clip_group) or self.grad_clip_group < 0 or \
                (self.grad_clip_group and self.batch_size % self.grad_clip_group):
            raise ValueError(f"training.grad_clip_group must be 0 or divide training.batch_size "
                             f"{self.batch_size}, got {self.grad_clip_group!r}")
        if not self.lr > 0 or self.warmup < 0 or not self.grad_clip >= 0 or self.num_images < 0:
            raise ValueError("training.lr must be > 0, training.grad_clip (0: no clipping), training.warmup and "
                             "training.num_images >= 0")
        if self.grad_clip_group and not self.grad_clip > 0:
            raise ValueError("training.grad_clip_group clips each group's gradient: it needs training.grad_clip > 0")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"training.ema_decay must lie in [0, 1], got {self.ema_decay}")


@dataclass(frozen=True)
class StageExecution:
    """How a `reproduce` stage runs: what the command line says with --precision, --batch-size,
    --shard-size, --compile and --channels-last (a key left out: the command's default). Of these the
    precision and the shard size are part of a result's identity; the others may move float32 rounding
    only."""

    precision: str = "fp32"  # the network's: fp32, tf32 or bf16 (every term stays float64)
    batch_size: int | None = None
    shard_size: int | None = None
    compile: str | None = None  # a torch.compile mode (default, reduce-overhead, max-autotune)
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        Execution(precision=self.precision, compile=self.compile)  # UserError naming the flag
        RunOptions(batch_size=self.batch_size, shard_size=self.shard_size)

    def execution(self, device: str) -> Execution:
        return Execution(device=device, precision=self.precision, channels_last=self.channels_last,
                         compile=self.compile)

    def run_options(self, out, *, force: bool = False, progress: bool = True, dry_run: bool = False) -> RunOptions:
        return RunOptions(out=None if out is None else str(out), force=force, batch_size=self.batch_size,
                          shard_size=self.shard_size, dry_run=dry_run, progress=progress)


@dataclass(frozen=True)
class NllStage:
    """[evaluation.nll]: the bound on train and test images (`ddpm-bench nll`)."""

    options: BoundOptions = field(default_factory=BoundOptions)
    execution: StageExecution = field(default_factory=StageExecution)
    train_images: int = 0  # 0 = every image of training.data
    test_images: int = 0  # 0 = every image of evaluation.test_data
    gap_terms: int = 0  # K > 0: the gap from importance-sampled bounds (nll --terms K) of gap_images per split
    gap_images: int = 0  # 0 = every image of each split (with gap_terms)

    def __post_init__(self) -> None:
        if min(self.train_images, self.test_images, self.gap_terms, self.gap_images) < 0:
            raise ValueError("train_images, test_images, gap_terms and gap_images must be >= 0")


@dataclass(frozen=True)
class OdeStage:
    """[evaluation.ode]: the probability-flow ODE likelihood of train and test images (`ddpm-bench nll --ode`),
    beside the bound; 0 images (the default) leaves it out."""

    options: OdeOptions = field(default_factory=OdeOptions)
    execution: StageExecution = field(default_factory=StageExecution)
    train_images: int = 0
    test_images: int = 0

    def __post_init__(self) -> None:
        if min(self.train_images, self.test_images) < 0:
            raise ValueError("train_images and test_images must be >= 0 (0: no ODE likelihood)")


@dataclass(frozen=True)
class ContinuousStage:
    """[evaluation.continuous]: the continuous-time bound of train and test images (`ddpm-bench nll
    --continuous`), beside the discrete bound; 0 images (the default) leaves it out."""

    options: ContinuousOptions = field(default_factory=ContinuousOptions)
    execution: StageExecution = field(default_factory=StageExecution)
    train_images: int = 0
    test_images: int = 0

    def __post_init__(self) -> None:
        if min(self.train_images, self.test_images) < 0:
            raise ValueError("train_images and test_images must be >= 0 (0: no continuous bound)")


@dataclass(frozen=True)
class SampleStage:
    """[evaluation.sample]: the samples for FID/IS and the figures (`ddpm-bench sample`)."""

    options: SamplerOptions = field(default_factory=SamplerOptions)
    execution: StageExecution = field(default_factory=StageExecution)
    num: int = 50_000
    progressive_every: int = 100  # paper Figure 6: the x0 prediction every N steps

    def __post_init__(self) -> None:
        if self.num < 1 or self.progressive_every < 1:
            raise ValueError(f"num and progressive_every must be >= 1, got {self.num} and {self.progressive_every}")


@dataclass(frozen=True)
class FidStage:
    """[evaluation.fid]: FID/IS of the samples (`ddpm-bench fid`); ref "" = training.data (the paper)."""

    options: FidOptions = field(default_factory=lambda: FidOptions(ref=""))
    execution: StageExecution = field(default_factory=StageExecution)


STAGES = (NllStage, OdeStage, ContinuousStage, SampleStage, FidStage)


@dataclass(frozen=True)
class EvalConfig:
    """What `ddpm-bench reproduce` measures after training (paper section 4); the paper's protocol by
    default: 50,000 samples with all T steps, the bound on the whole train and test splits, FID/IS
    against the training set with the standard Inception. Each stage's table holds the same options as
    its command's flags."""

    test_data: str = "cifar10:test"
    max_gap: float = MAX_GAP
    nll: NllStage = field(default_factory=NllStage)
    ode: OdeStage = field(default_factory=OdeStage)
    continuous: ContinuousStage = field(default_factory=ContinuousStage)
    sample: SampleStage = field(default_factory=SampleStage)
    fid: FidStage = field(default_factory=FidStage)


# Flat [evaluation] keys of ddpm-bench 0.1 and where they are now.
MOVED_EVALUATION_KEYS = {
    "nll_train_images": "evaluation.nll.train_images", "nll_test_images": "evaluation.nll.test_images",
    "nll_batch_size": "evaluation.nll.batch_size", "draws": "evaluation.nll.draws",
    "num_samples": "evaluation.sample.num", "sample_steps": "evaluation.sample.steps",
    "sample_batch_size": "evaluation.sample.batch_size", "progressive_every": "evaluation.sample.progressive_every",
    "fid_ref": "evaluation.fid.ref", "fid_backend": "evaluation.fid.backend",
    "feature_extractor": "evaluation.fid.feature_extractor", "fid_allow_few_samples": "evaluation.fid.allow_few_samples",
    "seed": "evaluation.nll.seed and evaluation.sample.seed",
    "precision": "evaluation.nll.precision and evaluation.sample.precision",
}


def stage_keys(cls: type) -> dict[str, tuple[str | None, Any]]:
    """The flat keys of a stage table: key -> (sub-dataclass field or None, type hint)."""
    keys: dict[str, tuple[str | None, Any]] = {}
    for f in fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if is_dataclass(hint):
            for name, sub_hint in typing.get_type_hints(hint).items():
                keys[name] = (f.name, sub_hint)
        else:
            keys[f.name] = (None, hint)
    return keys


def stage_to_dict(stage: Any) -> dict:
    """A stage as its flat table (the recipe's form)."""
    out = {}
    for f in fields(stage):
        value = getattr(stage, f.name)
        out.update(asdict(value) if is_dataclass(value) else {f.name: value})
    return out


def _positive(cfg: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"training.{name} must be >= 1, got {getattr(cfg, name)}")


SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "noise": NoiseConvention, "training": TrainConfig,
            "evaluation": EvalConfig}
# Keys a resumed training run may change: they do not change the parameters a step produces
# (a trailing dot covers a whole table).
RESUMABLE_KEYS = ("training.steps", "training.log_every", "training.ckpt_every", "training.keep_last", "training.eval",
                  "evaluation.")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    noise: NoiseConvention = field(default_factory=NoiseConvention)  # [noise]; the default: a discrete DDPM

    @property
    def continuous(self) -> bool:
        """A continuous-time model (a [noise] table with noise_input other than "index")."""
        return self.noise.continuous

    def to_dict(self) -> dict:
        """JSON-able nested dict in the recipe's form (tuples become lists); `model` is what `build_model`
        takes. A discrete model's has no `noise` section and no `training.time_sampling` (the form of every
        run before continuous-time models: their config.json and identities stay as they were)."""
        d = {name: asdict(getattr(self, name)) for name in SECTIONS if name != "evaluation"}
        if not self.continuous:
            del d["noise"]
        if not self.training.time_sampling:
            del d["training"]["time_sampling"]
        ev = self.evaluation
        stages = ("nll", "ode", "sample", "fid") + (("continuous",) if ev.continuous != ContinuousStage() else ())
        d["evaluation"] = {"test_data": ev.test_data, "max_gap": ev.max_gap,  # a stage not asked for: as before it
                           **{name: stage_to_dict(getattr(ev, name)) for name in stages}}
        return json.loads(json.dumps(d))


def resolve(cfg: RunConfig, origin: str) -> RunConfig:
    """Fill the derived settings and check the combination: out_channels from the variance type;
    objectives that cannot train a learned variance are refused; a continuous-time model (`[noise]`) and
    its objective go together."""
    try:
        cfg.diffusion.schedule()
    except ValueError as e:
        raise ConfigError(f"{origin}: diffusion: {e}") from None
    cfg = resolve_continuous(cfg, origin)
    want = cfg.model.in_channels * (2 if cfg.diffusion.learned_variance else 1)
    if cfg.model.out_channels not in (0, want):
        raise ConfigError(f"{origin}: model.out_channels = {cfg.model.out_channels} does not fit "
                          f"diffusion.var_type = {cfg.diffusion.var_type!r} (needs {want})")
    if cfg.diffusion.learned_variance and cfg.training.objective not in ("L", "L_vlb", "L_hybrid"):
        raise ConfigError(f"{origin}: training.objective = {cfg.training.objective!r} does not train the "
                          f"{cfg.diffusion.var_type!r} variance; use objective = 'L' (paper Table 2), 'L_vlb' or "
                          "'L_hybrid' (improved DDPM)")
    if cfg.training.objective == "L_hybrid" and not cfg.diffusion.learned_variance:
        raise ConfigError(f"{origin}: training.objective = 'L_hybrid' trains a learned variance through its L_vlb "
                          f"part; diffusion.var_type is {cfg.diffusion.var_type!r}: use 'learned-range' (improved "
                          "DDPM) or objective = 'L_simple'")
    return replace(cfg, model=replace(cfg.model, out_channels=want))


def resolve_continuous(cfg: RunConfig, origin: str) -> RunConfig:
    """Check that the objective fits the model's noise convention (the continuous objective for a [noise]
    table of noise_input "t" or "gamma" with eps prediction, a discrete one without), and fill the
    continuous objective's time sampling."""
    tc, noise = cfg.training, cfg.noise
    continuous_objective = tc.objective in CONTINUOUS_OBJECTIVES
    if noise.continuous and not continuous_objective:
        raise ConfigError(f"{origin}: training.objective = {tc.objective!r} is a discrete DDPM's objective, but "
                          f"noise.noise_input = {noise.noise_input!r} makes a continuous-time model: use "
                          "training.objective = 'vdm', or leave out the [noise] table")
    if not continuous_objective:
        if tc.time_sampling:
            raise ConfigError(f"{origin}: training.time_sampling is the continuous objective's ('vdm'); "
                              f"training.objective = {tc.objective!r} draws discrete steps: leave it out")
        return cfg
    if not noise.continuous:
        raise ConfigError(f"{origin}: training.objective = {tc.objective!r} trains a continuous-time model: give a "
                          "[noise] table with noise.noise_input = 't' and noise.schedule (e.g. 'vdm-linear'), or "
                          "noise.noise_input = 'gamma' with noise.gamma_min and noise.gamma_max")
    if noise.noise_input not in ("t", "gamma"):
        raise ConfigError(f"{origin}: noise.noise_input = {noise.noise_input!r} is not trained by the reference "
                          "trainer: use 't' (with noise.schedule) or 'gamma'")
    if noise.noise_input == "gamma" and noise.schedule not in (None, "vdm-linear"):
        raise ConfigError(f"{origin}: noise.schedule = {noise.schedule!r} with noise.noise_input = 'gamma': a gamma "
                          "model is trained with gamma uniform on [noise.gamma_min, noise.gamma_max]; leave out "
                          "noise.schedule, or use noise.noise_input = 't'")
    if noise.prediction != "eps":
        raise ConfigError(f"{origin}: noise.prediction = {noise.prediction!r}: training.objective = "
                          f"{tc.objective!r} trains an eps prediction; use noise.prediction = 'eps'")
    if cfg.diffusion.mean_type != noise.prediction:
        raise ConfigError(f"{origin}: diffusion.mean_type = {cfg.diffusion.mean_type!r} contradicts "
                          f"noise.prediction = {noise.prediction!r}; leave out diffusion.mean_type")
    if cfg.diffusion.learned_variance:
        raise ConfigError(f"{origin}: diffusion.var_type = {cfg.diffusion.var_type!r}: training.objective = "
                          f"{tc.objective!r} trains no variance; leave out diffusion.var_type")
    if tc.eval.every:
        raise ConfigError(f"{origin}: training.eval (the bound while training) evaluates discrete models only, "
                          "until the continuous bound (`nll --continuous`) can evaluate it; leave out "
                          "[training.eval] with a [noise] table")
    return replace(cfg, training=replace(tc, time_sampling=tc.time_sampling or TIME_SAMPLINGS[0]))


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    """A TOML (or config.json) value in its field's type (ddpm_bench.typecheck); a ConfigError naming the key
    otherwise. TOML has no null: None is the default of a key left out (a run's config.json writes null)."""
    try:
        return conform(value, hint)
    except Mismatch as e:
        raise ConfigError(f"{origin}: {key} = {value!r}: expected {e.expected}") from None


def _section(cls: type, values: dict, section: str, origin: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            if cls is EvalConfig and key in MOVED_EVALUATION_KEYS:
                raise ConfigError(f"{origin}: '{section}.{key}' is now {MOVED_EVALUATION_KEYS[key]}")
            raise ConfigError(f"{origin}: unknown key '{section}.{key}' (known in [{section}]: {', '.join(known)})")
        if hints[key] in STAGES:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{section}.{key}' must be a table [{section}.{key}]")
            kwargs[key] = _stage(hints[key], value, f"{section}.{key}", origin)
        elif is_dataclass(hints[key]):  # a table of its own, such as [training.eval]
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{section}.{key}' must be a table [{section}.{key}]")
            kwargs[key] = _section(hints[key], value, f"{section}.{key}", origin)
        else:
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", origin)
    return _construct(cls, kwargs, section, origin)


def _construct(cls: type, kwargs: dict, section: str, origin: str) -> Any:
    try:
        return cls(**kwargs)
    except (ValueError, UserError) as e:
        raise ConfigError(f"{origin}: [{section}] {e}") from None


def _stage(cls: type, values: dict, section: str, origin: str) -> Any:
    """A stage table: its flat keys routed to the stage's options, execution and own fields."""
    keys = stage_keys(cls)
    groups: dict[str | None, dict] = {}
    for key, value in values.items():
        if key not in keys:
            raise ConfigError(f"{origin}: unknown key '{section}.{key}' (known in [{section}]: {', '.join(keys)})")
        group, hint = keys[key]
        groups.setdefault(group, {})[key] = _coerce(value, hint, f"{section}.{key}", origin)
    default = cls()
    kwargs = dict(groups.get(None, {}))
    for f in fields(cls):
        if f.name in groups:
            kwargs[f.name] = _construct(type(getattr(default, f.name)),
                                        {**asdict(getattr(default, f.name)), **groups[f.name]}, section, origin)
    return _construct(cls, kwargs, section, origin)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); the value is read as a TOML value
    (`2e-4`, `true`, `[1, 2]`, `"text"`), and as a plain string when it is not one (`cifar10:train`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set training.steps=200")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def config_from_dict(data: dict, origin: str, overrides: list[str] = ()) -> RunConfig:
    """A RunConfig from nested recipe tables plus `--set` overrides (applied in order), resolved."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for name, value in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"{origin}: unknown key '{name}' (known tables: {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: '{name}' must be a table [{name}]")
    for item in overrides:
        path, value = parse_override(item)
        if len(path) not in (2, 3) or path[0] not in SECTIONS:
            raise ConfigError(f"--set {item}: unknown key '{'.'.join(path)}' (use SECTION.KEY with SECTION one of "
                              f"{', '.join(SECTIONS)}, or evaluation.STAGE.KEY)")
        table = data.setdefault(path[0], {})
        if len(path) == 3:
            table_type = typing.get_type_hints(SECTIONS[path[0]]).get(path[1])
            known = stage_keys(table_type) if table_type in STAGES else \
                {f.name for f in fields(table_type)} if is_dataclass(table_type) else set()
            if path[2] not in known:
                raise ConfigError(f"--set {item}: unknown key '{'.'.join(path)}'")
            table = table.setdefault(path[1], {})
            table = table if isinstance(table, dict) else {}
        elif path[1] not in {f.name for f in fields(SECTIONS[path[0]])}:
            hint = f" (now {MOVED_EVALUATION_KEYS[path[1]]})" if path[0] == "evaluation" and \
                path[1] in MOVED_EVALUATION_KEYS else ""
            raise ConfigError(f"--set {item}: unknown key '{'.'.join(path)}'{hint}")
        table[path[-1]] = value
    where = origin + (f" with --set {' '.join(overrides)}" if overrides else "")
    cfg = RunConfig(**{name: _section(cls, data.get(name, {}), name, where) for name, cls in SECTIONS.items()})
    return resolve(cfg, where)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a TOML recipe (or the config.json a run wrote) and apply `--set` overrides."""
    path = Path(path)
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{given('recipe', path)}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{given('recipe', path)}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{given('recipe', path)}: not valid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{given('recipe', path)}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{given('recipe', path)}: not a table of sections")
    return config_from_dict(data, f"recipe {path}", overrides)
