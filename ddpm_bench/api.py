"""The Python API of ddpm-bench: the library the `ddpm-bench` commands are thin shells over.

    import ddpm_bench
    model = ddpm_bench.load_model("embedded")                 # anything --ckpt takes, or a module in memory
    result = ddpm_bench.bound(model, "embedded:test", terms=10)  # or uint8 images, NHWC array / NCHW tensor
    result.summary.total_bpd, result.summary.total_bpd_stderr, result.per_image.totals

Every function takes the same settings as its command and gives the same bits for the same inputs: the
noise of image j is keyed by its index (its position in the data set, or `index=`), and the images are
computed in the same shards and batches. Results are the typed outputs (`NllOutput`, `SampleResult`,
`FidMetrics`, `GapResult`) with the model's identity; `out=DIR` writes them as the command would (and
resumes an unfinished run there), `read_output(DIR)` reads an nll output back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from ddpm_bench.data import DataSpec, ImageSet, select, validate_images
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import UserError
from ddpm_bench.estimators import read_output
from ddpm_bench.jobs.fid import FidJob, run_fid
from ddpm_bench.jobs.gap import gap_of
from ddpm_bench.jobs.nll import NllJob, run_nll
from ddpm_bench.jobs.rate_distortion import check_every_term
from ddpm_bench.jobs.sample import SampleJob, SampleResult, run_sample
from ddpm_bench.metrics import clean_fid_backend, torch_fidelity_backend
from ddpm_bench.metrics.protocol import FidOptions
from ddpm_bench.models.formats import memory
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import Execution, Network, load_network
from ddpm_bench.outputs import FidMetrics, GapResult, NllOutput
from ddpm_bench.rate_distortion_curve import RateDistortionCurve, rate_distortion_curve
from ddpm_bench.run_dir import RunOptions
from ddpm_bench.sampling import SamplerOptions
from ddpm_bench.variational_bound import BoundOptions, ImportanceOptions

ModelLike = Network | ModelSpec | str | os.PathLike | torch.nn.Module | Callable
ImagesLike = ImageSet | DataSpec | str | np.ndarray | torch.Tensor


def load_model(source: ModelLike | None = None, *, plugin: str | None = None, weights: str = "ema",
               flags: str | None = None, diffusion: DiffusionConfig | dict | None = None, scheduler=None,
               image_shape: tuple[int, int, int] | None = None, device: str = "auto", precision: str = "fp32",
               channels_last: bool | None = None, compile: str | None = None) -> Network:
    """A model ready to evaluate (a `Network`), from anything `--ckpt` takes (a checkpoint file, a run
    directory, `"embedded"`, a diffusers directory, `"hf:ORG/NAME"`, an improved-diffusion checkpoint with its
    `flags`), a `--model` plug-in (`plugin="file.py:make"`), or an
    object in memory: a torch module or f(x, t) with its `diffusion` settings (a DiffusionConfig or a dict
    of its fields; the paper's by default), or a diffusers `UNet2DModel` with its `scheduler`.
    `device`, `precision`, `channels_last` and `compile` say how it runs (as the command-line flags)."""
    execution = Execution(device=device, precision=precision, channels_last=channels_last, compile=compile)
    if isinstance(source, Network):
        return source
    if plugin is not None or isinstance(source, (str, os.PathLike, ModelSpec)):
        if isinstance(source, ModelSpec):
            spec = source
        else:
            settings = diffusion if isinstance(diffusion, dict) else ({} if diffusion is None else vars(diffusion))
            spec = ModelSpec(ckpt=None if source is None else os.fspath(source), model=plugin, weights=weights,
                             diffusion_flags=dict(settings), flags=flags)
        return load_network(spec, execution)
    if source is None:
        raise UserError("load_model: give a model (a path, 'embedded', a module) or plugin='MODULE:CALLABLE'")
    return Network(memory.from_object(source, diffusion, scheduler, image_shape), execution, image_shape)


def images_of(images: ImagesLike, index=None, data_root: str | None = None,
              num_images: int | None = None) -> ImageSet | DataSpec:
    """Images as the estimators take them: a data source name (or DataSpec) as it is, uint8 arrays as an
    ImageSet. An ndarray is NHWC (as on disk), a tensor NCHW (as torch); `index` (default 0..N-1) keys
    each image's noise, as its position in a data set does."""
    if isinstance(images, (ImageSet, DataSpec)):
        return images
    if isinstance(images, (str, os.PathLike)):
        return DataSpec(os.fspath(images), data_root, num_images)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise UserError(f"images: expected a uint8 tensor (N, C, H, W), got shape {tuple(images.shape)}")
        images = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    array = validate_images(np.asarray(images), "images")
    index = np.arange(len(array), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    if index.shape != (len(array),):
        raise UserError(f"index: expected {len(array)} data-set indices, got shape {index.shape}")
    chosen = select(array, index, "memory", num_images)
    return replace(chosen, source=f"memory:{chosen.sha256[:12]}")


def _run(out, force: bool, batch_size, shard_size, dry_run: bool, progress: bool) -> RunOptions:
    return RunOptions(out=None if out is None else os.fspath(out), force=force, batch_size=batch_size,
                      shard_size=shard_size, dry_run=dry_run, progress=progress)


def bound(model: ModelLike, images: ImagesLike, *, terms: int | None = None, seed: int = 0, draws: int = 1,
          clip: bool = True, decoder_cdf: str = "exact", proposal: str | os.PathLike | None = None,
          options=None, index=None, data_root: str | None = None, num_images: int | None = None,
          execution: Execution | None = None, batch_size: int | None = None, shard_size: int | None = None,
          out: str | os.PathLike | None = None, force: bool = False, dry_run: bool = False,
          progress: bool = False) -> NllOutput | None:
    """The likelihood of `images` under `model`: the exact variational bound (default), the
    importance-sampled bound with `terms=K` (its proposal from an exact output `proposal`, or a pilot), or
    the estimator whose options object `options` is. `model` is a Network or anything `load_model` takes;
    `execution` (how the network runs) applies to a model not yet loaded. Returns the typed output
    (`.summary.total_bpd`, `.summary.total_bpd_stderr`, `.per_image`), written to `out` when given."""
    if options is None:
        if terms is not None:
            if draws != 1:
                raise UserError("terms= and draws= > 1 do not go together: the K drawn terms are the sampling")
            options = ImportanceOptions(terms=terms, seed=seed, clip=clip, decoder_cdf=decoder_cdf,
                                        proposal=None if proposal is None else os.fspath(proposal))
        else:
            if proposal is not None:
                raise UserError("proposal= goes with terms=K (the importance-sampled bound)")
            options = BoundOptions(seed=seed, draws=draws, clip=clip, decoder_cdf=decoder_cdf)
    net = model if isinstance(model, (Network, ModelSpec)) else load_model(model, **_execution_kwargs(execution))
    job = NllJob(net, images_of(images, index, data_root, num_images), options, execution or Execution(),
                 _run(out, force, batch_size, shard_size, dry_run, progress))
    return run_nll(job)


def _execution_kwargs(execution: Execution | None) -> dict:
    if execution is None:
        return {}
    return {"device": execution.device, "precision": execution.precision,
            "channels_last": execution.channels_last, "compile": execution.compile}


def sample(model: ModelLike, num: int, *, seed: int = 0, steps: int | None = None, sampler: str = "ancestral",
           eta: float = 0.0, clip: bool = True, options: SamplerOptions | None = None,
           progressive_every: int | None = None, image_size: int | None = None, channels: int | None = None,
           execution: Execution | None = None, batch_size: int | None = None, shard_size: int | None = None,
           out: str | os.PathLike | None = None, force: bool = False, dry_run: bool = False,
           progress: bool = False) -> SampleResult | None:
    """`num` samples of `model` (ancestral, DDPM Algorithm 2, or DDIM), sample j a pure function of (seed,
    j): `.samples` uint8 (num, H, W, C), `.manifest`; written as a sample directory to `out` when given."""
    options = options or SamplerOptions(seed=seed, steps=steps, clip=clip, sampler=sampler, eta=eta)
    net = model if isinstance(model, (Network, ModelSpec)) else load_model(model, **_execution_kwargs(execution))
    job = SampleJob(net, num, options, execution or Execution(), _run(out, force, batch_size, shard_size, dry_run,
                                                                      progress),
                    image_size=image_size, channels=channels, progressive_every=progressive_every)
    return run_sample(job)


def fid(samples: str | os.PathLike | np.ndarray | torch.Tensor | SampleResult, ref: str = "cifar10:train", *,
        backend: str = "torch-fidelity", feature_extractor: str = "inception-v3-compat",
        options: FidOptions | None = None, device: str = "auto", batch_size: int | None = None,
        shard_size: int | None = None, out: str | os.PathLike | None = None, force: bool = False,
        progress: bool = False, **fid_options) -> FidMetrics | None:
    """FID (and IS, KID, precision/recall where the backend gives them) of `samples` (a sample directory,
    .npz, PNG folder, a SampleResult, or uint8 images) against `ref` (a data source or a reference
    statistics file); further `FidOptions` fields (num_samples, allow_few_samples, cache_dir, ...) by
    keyword. Returns the typed metrics; written to `out` when given."""
    options = options or FidOptions(ref=ref, backend=backend, feature_extractor=feature_extractor, **fid_options)
    if isinstance(samples, SampleResult):
        samples = samples.path if samples.path is not None else samples.samples
    source = os.fspath(samples) if isinstance(samples, (str, os.PathLike)) else images_of(samples)
    return run_fid(FidJob(source, options, device, _run(out, force, batch_size, shard_size, False, progress)))


def fid_from_features(features: np.ndarray, ref_features: np.ndarray, backend: str = "torch-fidelity") -> float:
    """The Frechet distance of two feature sets (N, D) (float64 statistics), as `backend` computes it."""
    module = {"torch-fidelity": torch_fidelity_backend, "clean-fid": clean_fid_backend}.get(backend)
    if module is None:
        raise UserError(f"backend {backend!r}: choose torch-fidelity or clean-fid")
    return module.frechet_distance(module.statistics(features), module.statistics(ref_features))


def rate_distortion(result: NllOutput | str | os.PathLike) -> RateDistortionCurve:
    """Rate and distortion along the reverse process (paper Table 4, Figure 5) of an exact bound's output."""
    output = result if isinstance(result, NllOutput) else read_output(result)
    check_every_term(output, str(output.path or "the result"))
    return rate_distortion_curve(output.per_image.terms, output.per_image.mse)


def gap(train: NllOutput | str | os.PathLike, test: NllOutput | str | os.PathLike, max_gap: float = 0.03,
        same_distribution: bool = False) -> GapResult:
    """The test-minus-train bits/dim gap of one model with a 95% interval (`exceeds`: the interval lies above
    `max_gap`), of a train and a test split of one data set (`same_distribution`: of two data sets the caller
    declares one distribution)."""
    a = train if isinstance(train, NllOutput) else read_output(train)
    b = test if isinstance(test, NllOutput) else read_output(test)
    return gap_of(a, b, max_gap, same_distribution)


__all__ = ["BoundOptions", "DiffusionConfig", "Execution", "FidOptions", "ImportanceOptions", "Network",
           "NllOutput", "SampleResult", "SamplerOptions", "bound", "fid", "fid_from_features", "gap",
           "load_model", "rate_distortion", "read_output", "sample"]
