"""The Python API of ddpm-bench: the library every `ddpm-bench` command is a thin shell over.

    import ddpm_bench
    model = ddpm_bench.load_model("embedded")                     # anything --ckpt takes, or a module in memory
    result = ddpm_bench.bound(model, "embedded:test", num_images=100)  # or uint8 images, NHWC array / NCHW tensor
    result.total_bpd, result.total_bpd_stderr, result.per_image.totals, result.identity

Every function takes the same settings as its command and gives the same bits for the same inputs: the
noise of image j is keyed by its index (its position in the data set, or `index=`), and the images are
computed in the same shards and batches. Results are typed (`NllOutput`, `SampleResult`, `FidMetrics`,
`GapResult`, `RateDistortionCurve`, `TrainResult`, `ReportResult`, `ReproduceResult`, `DryRun`) and carry the
model's identity; `out=DIR` writes them as the command would (and resumes an unfinished run there).

What the API promises a caller (docs/api.md):
- its arguments are checked once, here, as the command line checks its flags, and every error names them as
  the caller wrote them (`num_images=`, not `--num-images`): `ddpm_bench.arguments`;
- a module given in memory is left as it was found (mode, memory format, device, requires_grad, torch's
  random state): `network.Network.in_use`; asked to run it elsewhere, ddpm-bench works on its own copy;
- no directory stays locked after a call returns (`run_dir.released_after`); warnings go through `warnings`
  and notes through the `ddpm_bench` logger, never print.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace

import numpy as np
import torch

from ddpm_bench import arguments, run_dir
from ddpm_bench.arguments import given, named
from ddpm_bench.data import DataSpec, ImageSet, select, validate_images
from ddpm_bench.defaults import MAX_GAP
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.dry_run import DryRun
from ddpm_bench.errors import OutOfMemory, UserError
from ddpm_bench.estimators import ESTIMATORS, read_output
from ddpm_bench.estimators.continuous import ContinuousOptions
from ddpm_bench.estimators.ode import OdeOptions
from ddpm_bench.failures import is_out_of_memory
from ddpm_bench.jobs.fid import FidJob, run_fid
from ddpm_bench.jobs.gap import gap_of
from ddpm_bench.jobs.inspect import inspect_model, inspect_recipe
from ddpm_bench.jobs.nll import NllJob, run_nll
from ddpm_bench.jobs.rate_distortion import check_every_term, run_rate_distortion
from ddpm_bench.jobs.report import ReportResult, build_report
from ddpm_bench.jobs.reproduce import ReproduceResult, run_reproduce
from ddpm_bench.jobs.sample import SampleJob, SampleResult, run_sample
from ddpm_bench.jobs.train import TrainResult, run_train
from ddpm_bench.metrics import clean_fid_backend, torch_fidelity_backend
from ddpm_bench.metrics.protocol import FidOptions
from ddpm_bench.models.formats import load_network, memory
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import Execution, Network
from ddpm_bench.outputs import FidMetrics, GapResult, NllOutput, RateDistortionSummary
from ddpm_bench.rate_distortion_curve import RateDistortionCurve, rate_distortion_curve
from ddpm_bench.run_dir import RunOptions
from ddpm_bench.sampling import SamplerOptions
from ddpm_bench.variational_bound import BoundOptions, ImportanceOptions

ModelLike = Network | ModelSpec | str | os.PathLike | torch.nn.Module | Callable
ImagesLike = ImageSet | DataSpec | str | os.PathLike | np.ndarray | torch.Tensor
EstimatorOptions = BoundOptions | ImportanceOptions | OdeOptions | ContinuousOptions  # or a registered estimator's
NllSource = NllOutput | str | os.PathLike
MAX_SAMPLES = 10_000_000  # more samples than this cannot be meant (the paper's protocol: 50,000)
MAX_IMAGE_SIZE = 4096  # pixels a side


@contextlib.contextmanager
def _call(network: Network | None = None, batch_size: int | None = None) -> Iterator[None]:
    """Around every API call that runs a job: the caller's module left as it was found, no lock kept, and
    running out of memory one `OutOfMemory` error that names the batch size to lower."""
    try:
        with run_dir.released_after(), (network.in_use() if network is not None else contextlib.nullcontext()):
            yield
    except Exception as e:
        if not is_out_of_memory(e) or isinstance(e, OutOfMemory):
            raise
        what = "out of GPU memory" if "CUDA" in str(e) else "out of memory"
        lower = (f"with {given('batch_size', batch_size)}: lower it (e.g. {given('batch_size', max(1, batch_size // 2))})"
                 if batch_size else f"at the default batch size: give a smaller {named('batch_size')}")
        raise OutOfMemory(f"{what} {lower}; with out= the same call resumes") from None


# -- models -------------------------------------------------------------------------------------------------

def load_model(source: ModelLike | None = None, *, plugin: str | None = None, weights: str | None = None,
               flags: str | None = None, diffusion: DiffusionConfig | dict | None = None, scheduler=None,
               image_shape: tuple[int, int, int] | None = None, execution: Execution | None = None,
               device: str | None = None, precision: str | None = None, channels_last: bool | None = None,
               compile: str | None = None) -> Network:
    """A model ready to evaluate (a `Network`), from anything `--ckpt` takes (a checkpoint file, a run
    directory, `"embedded"`, a diffusers directory, `"hf:ORG/NAME"`, an improved-diffusion checkpoint with its
    `flags`), a `--model` plug-in (`plugin="file.py:make"`), or an object in memory: a torch module or f(x, t)
    with its `diffusion` settings (a DiffusionConfig or a dict of its fields; the paper's by default), or a
    diffusers `UNet2DModel` with its `scheduler`. How it runs: `execution=Execution(...)`, or its fields
    `device`, `precision`, `channels_last` and `compile` by keyword. Given a Network, the same model with the
    new execution settings. A module in memory is left as it is (see `Network`)."""
    fields_given = {k: v for k, v in {"device": device, "precision": precision, "channels_last": channels_last,
                                      "compile": compile}.items() if v is not None}
    loaded_with = {"plugin": plugin, "weights": weights, "flags": flags, "diffusion": diffusion,
                   "scheduler": scheduler}
    if isinstance(source, Network):
        if (extra := [k for k, v in {**loaded_with, "image_shape": image_shape}.items() if v is not None]):
            raise UserError(f"load_model: {named(extra[0])} describes a model to load; {source!r} is loaded already "
                            "(give only how it runs: execution= or device=, precision=, ...)")
        execution = _execution(execution, **fields_given)  # checked
        if fields_given:  # the fields given change the Network's own settings, the others stay
            execution = replace(source.execution, **fields_given)
        return source if execution is None else source.with_execution(execution)
    execution = _execution(execution, **fields_given)
    execution = execution or Execution()
    if plugin is not None or isinstance(source, (str, os.PathLike, ModelSpec)):
        if isinstance(source, ModelSpec):
            spec = source
        else:
            if source is not None:
                source = os.fspath(source)
                if not source.strip():
                    raise UserError("load_model: source='' names no model; give a path, 'embedded', 'hf:ORG/NAME' "
                                    "or a module")
            settings = diffusion if isinstance(diffusion, dict) else ({} if diffusion is None else vars(diffusion))
            spec = ModelSpec(ckpt=source, model=plugin, weights=weights or "ema", diffusion_flags=dict(settings),
                             flags=flags)
        return load_network(spec, execution)
    if source is None:
        raise UserError("load_model: give a model (a path, 'embedded', a module) or plugin='MODULE:CALLABLE'")
    for name in ("flags", "weights"):
        if loaded_with[name] is not None:
            raise UserError(f"load_model: {named(name)} describes a checkpoint file; a {type(source).__name__} in "
                            "memory is evaluated with the weights it holds (its settings: diffusion=)")
    image_shape = _image_shape(image_shape)
    return Network(memory.from_object(source, diffusion, scheduler, image_shape), execution, image_shape)


def _image_shape(shape) -> tuple[int, int, int] | None:
    """`image_shape=` as (C, H, W): three whole numbers, 1 or 3 channels first."""
    if shape is None:
        return None
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 3 or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise UserError(f"{given('image_shape', shape)}: give (C, H, W), three whole numbers, e.g. "
                        "(3, 32, 32)")
    c, h, w = (int(v) for v in shape)
    if c not in (1, 3):
        hint = f"; (H, W, C) order? give ({w}, {c}, {h})" if w in (1, 3) else ""
        raise UserError(f"{given('image_shape', shape)}: the channels come first, 1 or 3 (C, H, W){hint}")
    return c, h, w


def _execution(execution: Execution | None, **settings) -> Execution | None:
    """One Execution from `execution=` or its fields by keyword (None: neither given)."""
    given_fields = {k: v for k, v in settings.items() if v is not None}
    if execution is not None and not isinstance(execution, Execution):
        raise UserError(f"{named('execution')} must be an Execution(...), got {type(execution).__name__}")
    if execution is not None and given_fields:
        raise UserError(f"give execution= or {named(next(iter(given_fields)))} (its field), not both")
    return Execution(**given_fields) if given_fields else execution


def _network(model: ModelLike, execution: Execution | None) -> Network | ModelSpec:
    """The model as the jobs take it: a Network (loaded here, or the caller's with `execution`), or a spec."""
    if isinstance(model, ModelSpec):
        return model
    if model is None:
        raise UserError(f"{named('model')} None: give a model (load_model's result, a path, 'embedded' or a module)")
    return load_model(model, execution=execution) if execution is not None or not isinstance(model, Network) \
        else model


# -- images ---------------------------------------------------------------------------------------------------

def images_of(images: ImagesLike, index=None, data_root: str | None = None,
              num_images: int | None = None) -> ImageSet | DataSpec:
    """Images as the estimators take them: a data source name (or DataSpec) as it is, uint8 images as an
    ImageSet. A NumPy array is NHWC (as on disk), a torch tensor NCHW (as torch); `index` (default 0..N-1)
    keys each image's noise, as its position in a data set does."""
    num_images = arguments.count("num_images", num_images, optional=True)
    if images is None:
        raise UserError(f"{named('images')} None: give a data source ('embedded:test', 'cifar10:test', a .npz, a "
                        "folder of PNG files) or uint8 images (an NHWC array or an NCHW tensor)")
    if not isinstance(images, (torch.Tensor, np.ndarray)) and index is not None:
        raise UserError(f"{named('index')} is for images given as an array or tensor; a data source numbers "
                        f"its own images ({named('num_images')} takes its first N)")
    if isinstance(images, (ImageSet, DataSpec)):
        if num_images is not None:
            raise UserError(f"{given('num_images', num_images)}: images= is a {type(images).__name__}, which "
                            "holds its own images; take the ones you want before (or give a data source name)")
        return images
    if isinstance(images, (str, os.PathLike)):
        return DataSpec(os.fspath(images), data_root, num_images)
    if isinstance(images, torch.Tensor):
        array = _tensor_images(images)
    elif isinstance(images, np.ndarray):
        array = _array_images(images)
    else:
        raise UserError(f"{named('images')} is of type {type(images).__name__}: give a data source name or uint8 "
                        "images (an NHWC numpy array or an NCHW torch tensor)")
    n = len(array)
    index = np.arange(n, dtype=np.int64) if index is None else arguments.indices("index", index, n)
    chosen = select(array, index, "memory", num_images)
    return replace(chosen, source=f"memory:{chosen.sha256[:12]}")


FLOAT_ADVICE = "give uint8 values 0..255 (from the model scale [-1, 1]: ((x + 1) * 127.5).round().clip(0, 255))"


def _tensor_images(t: torch.Tensor) -> np.ndarray:
    """An NCHW uint8 tensor as the NHWC array the data sets hold; what is wrong said in its own terms."""
    shape = tuple(t.shape)
    if t.ndim != 4:
        raise UserError(f"{named('images')} a tensor of shape {shape}: expected uint8 (N, C, H, W)")
    if t.shape[1] not in (1, 3) and t.shape[3] in (1, 3):
        raise UserError(f"{named('images')} a tensor of shape {shape} looks NHWC; a tensor is NCHW (N, C, H, W): "
                        "pass images.permute(0, 3, 1, 2) (or the NHWC array images.numpy())")
    if t.dtype != torch.uint8:
        raise UserError(f"{named('images')} a {t.dtype} tensor{_value_range(t.detach().float().cpu().numpy())}; "
                        f"{FLOAT_ADVICE}.to(torch.uint8)")
    if t.shape[1] not in (1, 3):
        raise UserError(f"{named('images')} a tensor of shape {shape}: expected (N, C, H, W) with C in {{1, 3}}")
    return validate_images(t.detach().cpu().permute(0, 2, 3, 1).numpy(), named("images"))


def _array_images(a: np.ndarray) -> np.ndarray:
    """An NHWC uint8 array as it is; what is wrong said in its own terms."""
    if a.ndim == 4 and a.shape[3] not in (1, 3) and a.shape[1] in (1, 3):
        raise UserError(f"{named('images')} an array of shape {a.shape} looks NCHW; an array is NHWC (N, H, W, C), as "
                        "on disk: pass images.transpose(0, 2, 3, 1) (or the NCHW tensor torch.from_numpy(images))")
    if a.dtype != np.uint8:
        raise UserError(f"{named('images')} a {a.dtype} array{_value_range(a)}; {FLOAT_ADVICE}.astype(np.uint8)")
    return validate_images(a, named("images"))


def _value_range(a: np.ndarray) -> str:
    if a.dtype.kind not in "fciub" or not a.size:
        return ""
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        return " holding NaN or inf"
    return f" with values in [{float(a.min()):.3g}, {float(a.max()):.3g}]"


def _run(out, force: bool, batch_size, shard_size, dry_run: bool, progress: bool) -> RunOptions:
    return RunOptions(out=None if out is None else os.fspath(out), force=arguments.flag("force", force),
                      batch_size=arguments.count("batch_size", batch_size, optional=True),
                      shard_size=arguments.count("shard_size", shard_size, optional=True),
                      dry_run=arguments.flag("dry_run", dry_run), progress=arguments.flag("progress", progress))


# -- the likelihood -------------------------------------------------------------------------------------------

def bound(model: ModelLike, images: ImagesLike, *, terms: int | None = None, seed: int | None = None,
          draws: int | None = None, clip: bool | None = None, decoder_cdf: str | None = None,
          proposal: NllSource | None = None, options: EstimatorOptions | None = None, index=None,
          data_root: str | None = None, num_images: int | None = None, execution: Execution | None = None,
          batch_size: int | None = None, shard_size: int | None = None, out: str | os.PathLike | None = None,
          force: bool = False, dry_run: bool = False, progress: bool = False) -> NllOutput | DryRun:
    """The likelihood of `images` under `model`: the exact variational bound (default: T network evaluations
    per image), the importance-sampled bound with `terms=K` (K + 1 per image, plus a 4-image exact pilot
    that sets the proposal unless `proposal=` gives an exact output, on disk or in memory, of the same model),
    or the estimator whose options object `options` is (`OdeOptions()`: the probability-flow ODE likelihood;
    `ContinuousOptions()`: the continuous-time bound, `draws` gamma draws per image; the other settings
    then go inside it). `model` is a Network or anything `load_model` takes; `execution`
    says how it runs. Returns the typed output (`.total_bpd`, `.total_bpd_stderr`, `.per_image`,
    `.identity`), written to `out` when given; with `dry_run`, what it would cost (`DryRun`)."""
    options = estimator_options(options, terms=terms, seed=seed, draws=draws, clip=clip, decoder_cdf=decoder_cdf,
                                proposal=proposal)
    net = _network(model, execution)
    job = NllJob(net, images_of(images, index, data_root, num_images), options, execution or Execution(),
                 _run(out, force, batch_size, shard_size, dry_run, progress))
    with _call(net if isinstance(net, Network) else None, job.run.batch_size):
        return run_nll(job)


def estimator_options(options: EstimatorOptions | None = None, **settings) -> EstimatorOptions:
    """The options object of one estimate: `options` as it is, or built from `bound`'s keywords (`terms`
    chooses the importance-sampled bound); both at once is refused, as is a keyword the estimator has not."""
    settings = {k: v for k, v in settings.items() if v is not None}
    if options is not None:
        if not any(type(options) is cls.OPTIONS for cls in ESTIMATORS.values()):
            kinds = ", ".join(cls.OPTIONS.__name__ for cls in ESTIMATORS.values())
            raise UserError(f"{named('options')} must be the options of an estimator ({kinds}), got "
                            f"{type(options).__name__}")
        if settings:
            raise UserError(f"{given(next(iter(settings)), settings[next(iter(settings))])} beside "
                            f"options={type(options).__name__}(...): the options object holds every setting of the "
                            "estimate; put it inside it")
        return options
    if "proposal" in settings and "terms" not in settings:
        raise UserError(f"{named('proposal')} goes with {named('terms')}K (the importance-sampled bound)")
    cls = ImportanceOptions if "terms" in settings else BoundOptions
    known = {f.name for f in fields(cls)}
    for name in settings:
        if name not in known:
            raise UserError(f"{given(name, settings[name])} does not go with {named('terms')}: the K drawn terms are "
                            "the importance-sampled bound's own sampling" if name == "draws" else
                            f"{named(name)} is no setting of {cls.__name__}")
    return cls(**settings)


# -- samples and their quality --------------------------------------------------------------------------------

def sample(model: ModelLike, num: int, *, seed: int | None = None, steps: int | None = None,
           sampler: str | None = None, eta: float | None = None, clip: bool | None = None,
           options: SamplerOptions | None = None, progressive_every: int | None = None,
           image_size: int | None = None, channels: int | None = None, execution: Execution | None = None,
           batch_size: int | None = None, shard_size: int | None = None, out: str | os.PathLike | None = None,
           force: bool = False, dry_run: bool = False, progress: bool = False) -> SampleResult | DryRun:
    """`num` samples of `model` (ancestral, DDPM Algorithm 2, or DDIM: `num` x steps network evaluations),
    sample j a pure function of (seed, j): `.samples` uint8 (num, H, W, C), `.manifest`; written as a sample
    directory to `out` when given (without it they are kept in memory: mind `num`)."""
    num = arguments.count("num", num, high=MAX_SAMPLES)
    settings = {k: v for k, v in {"seed": seed, "steps": steps, "sampler": sampler, "eta": eta,
                                  "clip": clip}.items() if v is not None}
    if options is not None:
        if not isinstance(options, SamplerOptions):
            raise UserError(f"{named('options')} must be SamplerOptions(...), got {type(options).__name__}")
        if settings:
            name = next(iter(settings))
            raise UserError(f"{given(name, settings[name])} beside options=SamplerOptions(...): put it inside it")
    options = options or SamplerOptions(**settings)
    image_size = arguments.count("image_size", image_size, optional=True, high=MAX_IMAGE_SIZE)
    channels = arguments.count("channels", channels, optional=True, high=3)
    progressive_every = arguments.count("progressive_every", progressive_every, optional=True)
    net = _network(model, execution)
    job = SampleJob(net, num, options, execution or Execution(), _run(out, force, batch_size, shard_size, dry_run,
                                                                      progress),
                    image_size=image_size, channels=channels, progressive_every=progressive_every)
    with _call(net if isinstance(net, Network) else None, job.run.batch_size):
        return run_sample(job)


def fid(samples: str | os.PathLike | np.ndarray | torch.Tensor | SampleResult, ref: str | None = None, *,
        backend: str | None = None, feature_extractor: str | None = None, options: FidOptions | None = None,
        execution: Execution | None = None, batch_size: int | None = None, shard_size: int | None = None,
        out: str | os.PathLike | None = None, force: bool = False, progress: bool = False,
        **fid_options) -> FidMetrics:
    """FID (and IS, KID, precision/recall where the backend gives them) of `samples` (a sample directory,
    .npz, PNG folder, a SampleResult, or uint8 images) against `ref` (a data source or a reference statistics
    file; the paper's: the CIFAR-10 training set); further `FidOptions` fields (num_samples,
    allow_few_samples, cache_dir, ...) by keyword. `execution` says the device the features are computed on.
    Returns the typed metrics; written to `out` when given."""
    settings = {k: v for k, v in {"ref": ref, "backend": backend, "feature_extractor": feature_extractor,
                                  **fid_options}.items() if v is not None}
    known = {f.name for f in fields(FidOptions)}
    if (unknown := [k for k in settings if k not in known]):
        raise UserError(f"{named(unknown[0])} is no setting of fid (its settings: {', '.join(sorted(known))})")
    if options is not None:
        if not isinstance(options, FidOptions):
            raise UserError(f"{named('options')} must be FidOptions(...), got {type(options).__name__}")
        if settings:
            name = next(iter(settings))
            raise UserError(f"{given(name, settings[name])} beside options=FidOptions(...): put it inside it")
    options = options or FidOptions(**settings)
    if samples is None:
        raise UserError(f"{named('samples')} None: give a sample directory, .npz, PNG folder, a SampleResult or "
                        "uint8 images")
    if isinstance(samples, SampleResult):
        samples = samples.path if samples.path is not None else samples.samples
    source = os.fspath(samples) if isinstance(samples, (str, os.PathLike)) else images_of(samples)
    device = _device_only(execution, "fid", "its feature network runs in float32")
    run = _run(out, force, batch_size, shard_size, False, progress)
    with _call(batch_size=run.batch_size):
        return run_fid(FidJob(source, options, device, run))


def fid_from_features(features: np.ndarray, ref_features: np.ndarray, backend: str = "torch-fidelity") -> float:
    """The Frechet distance of two feature sets (N, D), N >= 2 each and one D (float64 statistics), as
    `backend` computes it."""
    module = {"torch-fidelity": torch_fidelity_backend, "clean-fid": clean_fid_backend}.get(backend)
    if module is None:
        raise UserError(f"{given('backend', backend)}: choose torch-fidelity or clean-fid")
    a = arguments.feature_matrix("features", features)
    b = arguments.feature_matrix("ref_features", ref_features)
    if a.shape[1] != b.shape[1]:
        raise UserError(f"{named('features')} has {a.shape[1]} features per image and {named('ref_features')} "
                        f"{b.shape[1]}: a Frechet distance compares features of one network")
    return module.frechet_distance(module.statistics(a), module.statistics(b))


# -- what the numbers say -------------------------------------------------------------------------------------

def _nll(source: NllSource, name: str) -> NllOutput:
    if isinstance(source, NllOutput):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_output(source)
    raise UserError(f"{named(name)} is of type {type(source).__name__}: give an nll result (bound's) or its "
                    "directory")


def rate_distortion(result: NllSource, out: str | os.PathLike | None = None,
                    force: bool = False) -> RateDistortionCurve:
    """Rate and distortion along the reverse process (paper Table 4, Figure 5) of an exact bound's output (in
    memory or its directory); with `out`, also its files (curve.csv, table4.*, figure5.*) as the command
    writes them."""
    output = _nll(result, "result")
    check_every_term(output, str(output.path or "the result"))
    if out is not None:
        if output.path is None:
            raise UserError(f"{named('out')} needs the result's directory (the files name their nll output): "
                            "compute it with bound(..., out=DIR) first")
        with _call():
            run_rate_distortion(out, output.path, force=arguments.flag("force", force))
    return rate_distortion_curve(output.per_image.terms, output.per_image.mse)


def rate_distortion_of(job: NllJob, out: str | os.PathLike, force: bool = False) -> RateDistortionSummary | DryRun:
    """The `rate-distortion` command with a model and data: the exact bound into OUT/nll, then its curve."""
    with _call():
        return run_rate_distortion(out, job, force=force)


def gap(train: NllSource, test: NllSource, max_gap: float = MAX_GAP, same_distribution: bool = False,
        out: str | os.PathLike | None = None) -> GapResult:
    """The test-minus-train bits/dim gap of one model with a 95% interval and its verdict against `max_gap`
    (`.verdict`: "below", "undecided" or "above"; `.overfits`), of a train and a test split of one data set
    (`same_distribution`: of two data sets the caller declares one distribution); written to `out` (a .json
    file, or gap.json in a folder) when given."""
    result = gap_of(_nll(train, "train"), _nll(test, "test"), max_gap,
                    arguments.flag("same_distribution", same_distribution))
    if out is not None:
        result.write(out)
    return result


def report(run_dirs: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
           force: bool = False) -> ReportResult:
    """Tables 1-4 and Figure 5 beside the paper's values, from reproduce runs or plain nll, fid and
    rate-distortion outputs, into `out` (report.md, the tables as CSV and Markdown, the figures)."""
    dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not dirs:
        raise UserError(f"{named('run_dirs')}: give at least one run directory")
    with _call():
        return build_report([os.fspath(d) for d in dirs], os.fspath(out), force=arguments.flag("force", force))


# -- training and the whole pipeline --------------------------------------------------------------------------

def _device_only(execution: Execution | None, job: str, why: str) -> str:
    """The device of a job that takes nothing else from `execution`: another setting in it is refused, never
    dropped in silence."""
    if execution is None:
        return Execution().device
    if not isinstance(execution, Execution):
        raise UserError(f"{named('execution')} must be an Execution(...), got {type(execution).__name__}")
    default = Execution()
    ignored = [f.name for f in fields(Execution) if f.name != "device" and
               getattr(execution, f.name) != getattr(default, f.name)]
    if ignored:
        raise UserError(f"{named('execution')} of {job} sets its device only ({why}); leave out "
                        f"{', '.join(ignored)}")
    return execution.device


def _overrides(set: Sequence[str] | str) -> list[str]:
    """`set=` as a list of "section.key=value" items (one string is one item)."""
    items = [set] if isinstance(set, str) else set
    try:
        items = list(items)
    except TypeError:
        raise UserError(f"{named('set')} must be a list of \"section.key=value\" strings, got "
                        f"{type(set).__name__}") from None
    if not all(isinstance(item, str) for item in items):
        raise UserError(f"{named('set')} must be a list of \"section.key=value\" strings, got {items!r}")
    return items


def train(recipe: str | os.PathLike | None, out: str | os.PathLike, *, set: Sequence[str] = (),
          execution: Execution | None = None, data_root: str | None = None, force: bool = False,
          progress: bool = False) -> TrainResult:
    """Train the recipe's model (DDPM Algorithm 1) into the run directory `out`, resuming a run there (recipe
    None: go on with the run in `out` from its config.json); `set` overrides recipe values ("training.steps=200").
    Returns the run: its directory, step and latest checkpoint (`load_model(result.path)` evaluates it)."""
    device = _device_only(execution, "train", "the recipe's [training] table sets the rest")
    with _call():
        return run_train(None if recipe is None else os.fspath(recipe), _overrides(set), os.fspath(out),
                         device=device, force=arguments.flag("force", force),
                         progress=arguments.flag("progress", progress), data_root=data_root)


def reproduce(recipe: str | os.PathLike, out: str | os.PathLike, *, set: Sequence[str] = (), ckpt: str | None = None,
              execution: Execution | None = None, data_root: str | None = None, force: bool = False,
              dry_run: bool = False, progress: bool = False) -> ReproduceResult | DryRun:
    """Everything for one recipe, resumable: train (or load `ckpt`), sample, the bound on both splits, the gap,
    rate-distortion, FID/IS and the report, into `out`. Returns the run with its headline numbers and the
    gap's verdict (`.overfits`); with `dry_run`, what each stage would cost."""
    device = _device_only(execution, "reproduce", "the recipe's tables set the rest")
    with _call():
        return run_reproduce(os.fspath(recipe), _overrides(set), os.fspath(out), ckpt=ckpt, device=device,
                             data_root=data_root, force=arguments.flag("force", force),
                             dry=arguments.flag("dry_run", dry_run), progress=arguments.flag("progress", progress))


def inspect(source: str | os.PathLike | None = None, *, recipe: str | os.PathLike | None = None,
            set: Sequence[str] = (), flags: str | None = None) -> dict:
    """What a model (anything `--ckpt` takes) or a recipe holds: parameter count, identity, configuration."""
    if (source is None) == (recipe is None):
        raise UserError(f"give exactly one of {named('source')} and {named('recipe')}")
    if source is not None and set:
        raise UserError(f"{named('set')} changes a recipe; a checkpoint's config is what it was trained with")
    if flags is not None and source is None:
        raise UserError(f"{named('flags')} describes an improved-diffusion checkpoint: give it with the file")
    if source is not None:
        return inspect_model(ModelSpec(ckpt=os.fspath(source), flags=flags))
    return inspect_recipe(os.fspath(recipe), _overrides(set))


__all__ = ["BoundOptions", "ContinuousOptions", "DiffusionConfig", "DryRun", "EstimatorOptions", "Execution", "FidMetrics", "FidOptions",
           "GapResult", "ImportanceOptions", "Network", "NllOutput", "OdeOptions", "RateDistortionCurve",
           "ReportResult", "ReproduceResult", "SampleResult", "SamplerOptions", "TrainResult", "bound",
           "estimator_options", "fid", "fid_from_features", "gap", "inspect", "load_model", "rate_distortion",
           "read_output", "report", "reproduce", "sample", "train"]
