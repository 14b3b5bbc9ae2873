"""`ddpm-bench reproduce`: the paper's pipeline for one recipe, end to end and resumable.

Stages, each skipped when its output is already complete (each stage's own resume rules apply):
  train (or --ckpt) -> sample -> nll on train and test -> gap -> rate-distortion -> FID/IS -> report
RUN_DIR layout: `ddpm_bench.outputs.ReproduceLayout` (config.json, log.csv, checkpoints/ from training,
samples/, nll_train/, nll_test/, gap.json, rate_distortion/, fid/, report/, reproduce.json with what ran
and its timings). Every stage takes its options whole from the recipe's `[evaluation.STAGE]` table.

RUN_DIR is claimed for the whole run: by `train` (its run.json) when training, else as a `reproduce` run
of the checkpoint's model identity, whose own stored config is what config.json records. The image
shape of the model is checked against every data set of the recipe before any stage runs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ddpm_bench import run_dir
from ddpm_bench.config import RunConfig, load_recipe
from ddpm_bench.data import DataSpec
from ddpm_bench.dry_run import DryRun
from ddpm_bench.errors import ConfigError, OutputDirError, UserError
from ddpm_bench.estimators import read_summary
from ddpm_bench.jobs.fid import FidJob, run_fid
from ddpm_bench.jobs.gap import compute_gap
from ddpm_bench.jobs.nll import NllJob, run_nll
from ddpm_bench.jobs.rate_distortion import run_rate_distortion
from ddpm_bench.jobs.report import build_report
from ddpm_bench.jobs.reproduce_eta import reproduce_eta
from ddpm_bench.jobs.sample import SampleJob, run_sample
from ddpm_bench.jobs.train import run_train
from ddpm_bench.messages import note
from ddpm_bench.metrics.reference_cache import is_statistics_file
from ddpm_bench.models.formats import load_model
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.outputs import (
    FidMetrics,
    GapResult,
    NllSummary,
    OutputFileError,
    ReportFiles,
    ReproduceLayout,
    ReproduceRecord,
    TrainLayout,
)
from ddpm_bench.provenance import environment
from ddpm_bench.reporting.verdict import gap_verdict
from ddpm_bench.run_dir import SettingsChanged
from ddpm_bench.shards import atomic_write_json
from ddpm_bench.variational_bound import ImportanceOptions

COMMAND = "reproduce"
STAGES = ("train", "sample", "nll_train", "nll_test", "gap_nll_train", "gap_nll_test", "gap", "ode_train", "ode_test",
          "continuous_train", "continuous_test",
          "rate_distortion", "fid", "report")


def _say(msg: str) -> None:
    note(msg)


@dataclass(frozen=True)
class ReproduceResult:
    """A finished (or resumed) `reproduce` run: its directory, what ran (`record`), the headline numbers in a
    few lines, and the gap's verdict (`gap`, None when it has none); `overfits` is what the command exits 1
    on."""

    path: Path
    record: ReproduceRecord
    lines: tuple[str, ...]
    gap: GapResult | None

    @property
    def overfits(self) -> bool:
        return self.gap is not None and self.gap.overfits

    @property
    def report(self) -> Path:
        return ReproduceLayout(self.path).report / ReportFiles.INDEX

    def __repr__(self) -> str:
        return f"<ReproduceResult {self.path}:\n  " + "\n  ".join(self.lines) + ">"


def final_checkpoint(run: Path) -> Path:
    ckpts = TrainLayout(run).list_checkpoints()
    if not ckpts:
        raise UserError(f"{run}: training left no checkpoint")
    return ckpts[-1]


def data_specs(cfg: RunConfig, data_root: str | None) -> dict[str, DataSpec]:
    """The data sets of the recipe's stages: the bound on train and test, and the FID reference."""
    ev = cfg.evaluation
    root = data_root or cfg.training.data_root or None
    specs = {"nll_train": DataSpec(cfg.training.data, root, ev.nll.train_images or None),
             "nll_test": DataSpec(ev.test_data, root, ev.nll.test_images or None)}
    ref = ev.fid.options.ref or cfg.training.data
    if not is_statistics_file(ref):
        specs["fid reference"] = DataSpec(ref, root, ev.fid.options.num_ref)
    return specs


def check_image_shapes(shape: tuple[int, int, int], specs: dict[str, DataSpec], origin: str) -> None:
    """Every data set of the recipe holds images of the model's (C, H, W): checked before any stage."""
    for stage, spec in specs.items():
        images = spec.load()
        if tuple(images.shape) != tuple(shape):
            raise UserError(f"{origin} makes (C, H, W) = {tuple(shape)} images, but the {stage} data {spec.source} "
                            f"holds {tuple(images.shape)}; set the recipe's data to images of the model's shape")


def checkpoint_config(source: LoadedModel, cfg: RunConfig) -> dict:
    """config.json of a `reproduce --ckpt` run: the checkpoint's own stored config (not the recipe's), the
    recipe's evaluation, and the model identity."""
    stored = dict(source.config or {})
    if "diffusion" not in stored:
        stored["diffusion"] = asdict(source.diffusion)
    return {**stored, "evaluation": cfg.to_dict()["evaluation"], "checkpoint": source.describe()}


def run_reproduce(recipe: str, overrides: list[str], out: str, ckpt: str | None = None, device: str = "auto",
                  data_root: str | None = None, force: bool = False, dry: bool = False,
                  progress: bool = True) -> ReproduceResult | DryRun:
    """Every stage of the recipe into `out` (or, with `dry`, what each would cost)."""
    cfg = load_recipe(recipe, overrides)
    if cfg.continuous:
        raise ConfigError(f"recipe {recipe}: a continuous-time model ([noise] table): `reproduce` evaluates discrete "
                          "models only until the continuous bound (`nll --continuous`) is one of its stages; train "
                          "it with `ddpm-bench train`")
    ev = cfg.evaluation
    if dry:
        return reproduce_eta(cfg, ckpt, device, data_root)
    layout = ReproduceLayout(Path(out))
    specs = data_specs(cfg, data_root)
    timings: dict[str, float] = {}

    def stage(name: str, fn) -> None:
        """Run a stage; with --force, a stage whose settings changed starts over, and only that stage (a
        changed training, or another model, starts the whole run over: every result depends on it)."""
        t0 = time.perf_counter()
        _say(f"{name} ...")
        try:
            fn(False)
        except SettingsChanged as e:
            if not force:
                raise OutputDirError(f"stage {name}: --out {e.out} holds a run with other settings ({e.differences}); the recipe "
                                     "changed since this stage ran: restore it, or run again with --force to compute "
                                     "the stages whose settings changed (only those)") from None
            _say(f"{name}: its settings changed; --force: computing it again")
            fn(True)
        timings[name] = round(time.perf_counter() - t0, 1)
        _say(f"{name} done in {timings[name]:.1f} s")

    if ckpt is None:
        m = cfg.model
        check_image_shapes((m.in_channels, m.image_size, m.image_size), {k: v for k, v in specs.items()
                                                                         if k != "nll_train"}, f"recipe {recipe}")
        stage("train", lambda f: run_train(recipe, overrides, out=str(layout.root), device=device, force=f,
                                           progress=progress))
        model = ModelSpec(ckpt=str(final_checkpoint(layout.root)))
    else:
        model = ModelSpec(ckpt=ckpt)
        source = load_model(model)
        if source.image_shape is not None:
            check_image_shapes(source.image_shape, specs, f"--ckpt {ckpt}")
        stage("model", lambda f: run_dir.claim(layout.root, COMMAND, {"model": source.identity.sha256}, force=f))
        atomic_write_json(layout.config, checkpoint_config(source, cfg))
    _say(f"model: {model.ckpt}")

    def sample(force: bool) -> None:
        ex = ev.sample.execution
        run_sample(SampleJob(model, ev.sample.num, ev.sample.options, ex.execution(device),
                             ex.run_options(layout.samples, force=force, progress=progress),
                             progressive_every=ev.sample.progressive_every))

    def nll_job(split: str, out: Path, force: bool, options=None, num_images: int | None = None) -> NllJob:
        ex, spec = ev.nll.execution, specs[split]
        if num_images is not None:
            spec = replace(spec, num_images=num_images)
        return NllJob(model, spec, options or ev.nll.options, ex.execution(device),
                      ex.run_options(out, force=force, progress=progress))

    def gap_nll(split: str, out: Path, force: bool) -> None:  # importance-sampled, proposal from nll_test (exact)
        o = ev.nll.options
        options = ImportanceOptions(terms=ev.nll.gap_terms, seed=o.seed, clip=o.clip, decoder_cdf=o.decoder_cdf,
                                    proposal=str(layout.nll_test))
        run_nll(nll_job(split, out, force, options, ev.nll.gap_images or None))

    gap_dirs = (layout.gap_nll_train, layout.gap_nll_test) if ev.nll.gap_terms else (layout.nll_train, layout.nll_test)

    def gap(force: bool) -> None:
        result = compute_gap(*gap_dirs, ev.max_gap)
        result.write(layout.root)
        _say(f"gap {result.gap_bpd:+.4f} bits/dim, 95% interval [{result.ci95[0]:+.4f}, {result.ci95[1]:+.4f}]: "
             f"{result.verdict} max_gap {ev.max_gap:g}")

    def fid(force: bool) -> None:
        opts = ev.fid.options
        opts = replace(opts, ref=opts.ref or cfg.training.data, data_root=data_root or opts.data_root)
        run_fid(FidJob(str(layout.samples), opts, device,
                       ev.fid.execution.run_options(layout.fid, force=force, progress=progress)))

    stage("sample", sample)
    stage("nll_train", lambda f: run_nll(nll_job("nll_train", layout.nll_train, f)))
    stage("nll_test", lambda f: run_nll(nll_job("nll_test", layout.nll_test, f)))
    if ev.nll.gap_terms:
        stage("gap_nll_train", lambda f: gap_nll("nll_train", layout.gap_nll_train, f))
        stage("gap_nll_test", lambda f: gap_nll("nll_test", layout.gap_nll_test, f))
    stage("gap", gap)
    for st, split, n, out in ((ev.ode, "nll_train", ev.ode.train_images, layout.ode_train),
                              (ev.ode, "nll_test", ev.ode.test_images, layout.ode_test),
                              (ev.continuous, "nll_train", ev.continuous.train_images, layout.continuous_train),
                              (ev.continuous, "nll_test", ev.continuous.test_images, layout.continuous_test)):
        if n:
            ex = st.execution
            job = NllJob(model, replace(specs[split], num_images=n), st.options, ex.execution(device),
                         ex.run_options(out, progress=progress))
            stage(out.name, lambda f, job=job: run_nll(replace(job, run=replace(job.run, force=f))))
    stage("rate_distortion", lambda f: run_rate_distortion(layout.rate_distortion, layout.nll_test, force=True))
    stage("fid", fid)
    stage("report", lambda f: build_report([layout.root], layout.report, force=True))
    seconds = dict(timings)
    if layout.record.exists():
        try:
            seconds = {**ReproduceRecord.read(layout.root).seconds, **timings}
        except OutputFileError as e:
            _say(f"warning: {e}; writing it anew")
    record = ReproduceRecord(recipe=str(recipe), overrides=list(overrides), checkpoint=model.ckpt,
                             stages=list(STAGES), seconds=seconds, extra={"environment": environment()})
    record.write(layout.root)
    _say(f"report: {layout.report / ReportFiles.INDEX}")
    lines, _ = headline(layout.root)
    gap_result = GapResult.read(layout.root) if layout.gap.is_file() else None
    return ReproduceResult(layout.root, record, tuple(lines), gap_result)


def headline(root: Path) -> tuple[list[str], bool]:
    """What a finished (or resumed) reproduce run measured, in a few lines, and whether its model overfits
    beyond the recipe's max_gap (as `gap` judges it: the whole 95% interval above it)."""
    layout = ReproduceLayout(root)
    lines = []
    for name, folder in (("test", layout.gap_nll_test), ("test", layout.nll_test), ("train", layout.gap_nll_train),
                         ("train", layout.nll_train)):
        if (folder / NllSummary.FILE).is_file() and not any(line.startswith(f"NLL {name}") for line in lines):
            s = read_summary(folder)
            se = f" +- {s.total_bpd_stderr:.3f}" if s.total_bpd_stderr is not None else ""
            lines.append(f"NLL {name} {s.total_bpd:.3f}{se} bits/dim ({s.estimator}, {s.n_images} images of {s.data})")
    for what, name, folder in (("continuous bound", "test", layout.continuous_test),
                               ("continuous bound", "train", layout.continuous_train),
                               ("ODE likelihood", "test", layout.ode_test), ("ODE likelihood", "train", layout.ode_train)):
        if (folder / NllSummary.FILE).is_file():
            s = read_summary(folder)
            se = f" +- {s.total_bpd_stderr:.3f}" if s.total_bpd_stderr is not None else ""
            lines.append(f"{what} {name} {s.total_bpd:.3f}{se} bits/dim ({s.n_images} images of {s.data})")
    exceeds = False
    if layout.gap.is_file():
        g = GapResult.read(layout.root)
        exceeds = g.overfits
        verdict = gap_verdict(g)
        lines.append("the model " + verdict if g.overfits else verdict)
    if (layout.fid / FidMetrics.FILE).is_file():
        m = FidMetrics.read(layout.fid)
        lines.append(f"{m.label} {m.fid:.{FidMetrics.SHOWN_DIGITS}f} ({m.n_samples} samples against {m.ref})"
                     + ("" if m.comparable_to_paper else ", not comparable to the paper's"))
    return lines, exceeds
