"""The table of model formats: each row a module with `detect(spec)`, `load(spec) -> LoadedModel` (on the
CPU, with its identity) and, optionally, `inspect(spec) -> dict`. The first row that detects a `ModelSpec`
loads it; a new format is one module and one row here.

| row | what `--ckpt` / `--model` names |
|---|---|
| plugin | `--model MODULE:CALLABLE` |
| packaged | `--ckpt embedded`, `--ckpt embedded-continuous`: the models that ship with the install |
| iddpm | `--ckpt FILE.pt --flags "..."`: an improved-diffusion checkpoint and its flags |
| checkpoint | a ddpm-bench checkpoint file, or a train / reproduce run directory (its latest checkpoint) |
| hub | `hf:ORG/NAME[@REVISION]`: a diffusers model on the Hugging Face Hub (or in its local cache) |
| diffusers_dir | a diffusers `UNet2DModel` directory (optional extra `diffusers`) |
"""

from __future__ import annotations

from types import ModuleType

from ddpm_bench.arguments import named
from ddpm_bench.errors import UserError
from ddpm_bench.models.formats import checkpoint, diffusers_dir, hub, iddpm, packaged, plugin
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import Execution, Network

FORMATS: tuple[ModuleType, ...] = (plugin, packaged, iddpm, hub, checkpoint, diffusers_dir)


def _check_table(formats: tuple[ModuleType, ...]) -> None:
    names = [f.NAME for f in formats]
    if len(set(names)) != len(names):
        raise ValueError(f"model formats with one name: {names}")
    for f in formats:
        if not callable(getattr(f, "detect", None)) or not callable(getattr(f, "load", None)):
            raise ValueError(f"model format {f.__name__} lacks detect() or load()")


_check_table(FORMATS)


def register(fmt) -> object:
    """Add a format (a module or object with `NAME`, `detect(spec)` and `load(spec) -> LoadedModel`) to the
    table, ahead of the built-in rows (a format of one's own is more specific than "any other file is a
    checkpoint"); a duplicate name or a row without detect/load is refused."""
    global FORMATS
    table = (fmt, *FORMATS)
    _check_table(table)
    FORMATS = table
    return fmt


def format_of(spec: ModelSpec) -> ModuleType:
    """The first format of the table that detects `spec`; improved-diffusion flags given to a format that
    stores its own settings are refused (they would be ignored)."""
    for f in FORMATS:
        if f.detect(spec):
            if spec.flags is not None and not getattr(f, "TAKES_FLAGS", False):
                raise UserError(f"{named('flags')} describes an improved-diffusion checkpoint; {spec.ckpt or spec.model} "
                                f"is a {f.NAME} model, which stores its own settings: leave out {named('flags')}")
            return f
    raise AssertionError(f"no model format detects {spec}")  # checkpoint detects every non-directory path


def load_model(spec: ModelSpec) -> LoadedModel:
    """The model `spec` names, loaded on the CPU by its format."""
    return format_of(spec).load(spec)


def load_network(model: ModelSpec | Network, execution: Execution | None = None) -> Network:
    """A ready Network as it is, or the model a spec names run with `execution`."""
    return model if isinstance(model, Network) else Network(load_model(model), execution or Execution())
