"""The argument groups the commands share, each defined once, and the typed options built from them (one
object per concern: `ModelSpec`, `DataSpec`, an estimator's options, `Execution`, `RunOptions`).

Usage errors are one line, `ddpm-bench CMD: error: MESSAGE (see ddpm-bench CMD --help)`, exit status 2;
abbreviated flags are not accepted (`--num-image` is an unknown flag, not `--num-images`)."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields

from ddpm_bench.data import DataSpec
from ddpm_bench.diffusion import MEAN_TYPES, VAR_TYPES
from ddpm_bench.errors import UserError
from ddpm_bench.estimators import ESTIMATORS
from ddpm_bench.estimators.base import Estimator
from ddpm_bench.models.formats.common import diffusion_from_flags
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import COMPILE_MODES, PRECISIONS, Execution
from ddpm_bench.noise import MAX_SEED
from ddpm_bench.run_dir import RunOptions
from ddpm_bench.schedule import BETA_SCHEDULES

DATA_HELP = ("the images: embedded:train|test, cifar10:train|test, PATH.npz (arr_0 uint8 NHWC), a folder of PNG "
             "files, or a sample directory of `ddpm-bench sample`")


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, exit status 2, no abbreviations, and every missing
    required argument named at once."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default where it says something: not for a required flag, a flag without a value,
    a default of None, or a help text that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or any(action.default is x for x in (None, False, argparse.SUPPRESS)) or "default" in text \
                or isinstance(action, argparse.BooleanOptionalAction) and action.default is None:
            return text
        return text + " (default: %(default)s)"


def seed(text: str) -> int:
    """argparse type of --seed: an integer in 0..2**63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..2**63-1, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must lie in 0..2**63-1 ({MAX_SEED}), got {text}")
    return value


# -- shared argument groups ---------------------------------------------------------------------------------

def add_model_args(p: argparse.ArgumentParser, image_shape: bool = False) -> None:
    g = p.add_argument_group("model source (exactly one of --ckpt and --model)")
    g.add_argument("--ckpt", help="a ddpm-bench checkpoint file, `embedded` (the model that ships with the install), "
                                  "a train or reproduce run directory (its latest checkpoint), a diffusers "
                                  "UNet2DModel directory, hf:ORG/NAME[@REVISION] (a diffusers model on the Hub), "
                                  "or an improved-diffusion checkpoint with --flags")
    g.add_argument("--weights", choices=("ema", "raw"), default="ema", help="which weights of a ddpm-bench checkpoint")
    g.add_argument("--model", help="MODULE:CALLABLE returning a torch module or f(x, t); MODULE may be a .py path")
    g.add_argument("--flags", default=None, metavar="\"MODEL_FLAGS DIFFUSION_FLAGS\"",
                   help="an improved-diffusion checkpoint's flags, as its README writes them (with --ckpt FILE.pt)")
    g = p.add_argument_group("diffusion settings of a --model (a --ckpt stores its own; a contradicting flag is an error)")
    g.add_argument("--T", type=int, default=None, help="number of diffusion steps (default 1000)")
    g.add_argument("--beta-schedule", choices=BETA_SCHEDULES, default=None, help="(default linear)")
    g.add_argument("--beta-start", type=float, default=None, help="(default 1e-4)")
    g.add_argument("--beta-end", type=float, default=None, help="(default 0.02)")
    g.add_argument("--mean-type", choices=MEAN_TYPES, default=None, help="(default eps)")
    g.add_argument("--var-type", choices=VAR_TYPES, default=None, help="(default fixed-large)")
    if image_shape:
        g.add_argument("--image-size", type=int, default=None, help="H = W of a --model (default 32)")
        g.add_argument("--channels", type=int, default=None, help="C of a --model (default 3)")


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help=DATA_HELP)
    g.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py (else $DDPM_BENCH_DATA)")
    g.add_argument("--num-images", type=int, default=None, help="use the first N images (default all)")


DEVICE_HELP = "cpu, cuda, cuda:N, or auto (the first GPU, else the CPU); under torchrun, the process's own GPU"


def add_device_arg(g) -> None:
    g.add_argument("--device", default="auto", help=DEVICE_HELP)
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of this process (default: torch's, one per core; recorded in every output as "
                        "environment.machine.torch_threads)")


def add_progress_arg(g) -> None:
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_out_args(g, out_help: str, force_help: str = "empty an existing --out that holds something else") -> None:
    g.add_argument("--out", required=True, help=out_help)
    g.add_argument("--force", action="store_true", help=force_help)


def add_execution_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("how the network runs (only --precision changes what it computes)")
    add_device_arg(g)
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="network precision (the math around it stays float64)")
    g.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
                   help="torch.compile the network; MODE default, reduce-overhead (CUDA graphs on a GPU) or "
                        "max-autotune (pays off on long GPU runs; may change float32 rounding)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="run a torch module in channels-last memory format (may change float32 rounding); "
                        "on by default on a CPU, where it is faster, off on a GPU")


def add_run_args(p: argparse.ArgumentParser, batch_help: str, shard_help: str, dry_run: bool = True) -> None:
    g = p.add_argument_group("the run")
    add_out_args(g, "output directory (resumed when it holds an unfinished run with the same settings)")
    g.add_argument("--batch-size", type=int, default=None, help=batch_help)
    g.add_argument("--shard-size", type=int, default=None, help=shard_help)
    if dry_run:
        g.add_argument("--dry-run", action="store_true", help="print the work and an ETA from a timed probe, then stop")
    add_progress_arg(g)


# -- estimator flags, generated from the estimators' options ------------------------------------------------

def _flag(f) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _dest(f) -> str:
    return f"option_{f.name}"


def add_estimator_args(p: argparse.ArgumentParser, estimators: tuple[type[Estimator], ...]) -> None:
    """One flag per option of the estimators (an option several share, such as --seed, once), with their
    defaults of None so that what was given is known; `--estimator NAME` and each estimator's own way of
    being chosen (its SELECT option, e.g. --terms K, or its FLAG, e.g. --ode)."""
    g = p.add_argument_group("estimator (the exact bound unless an option of another one is given)")
    if len(estimators) > 1:
        g.add_argument("--estimator", choices=[c.NAME for c in estimators], default=None,
                       help="which estimator (default: the one whose option is given, else exact)")
    seen: set[str] = set()
    for cls in estimators:
        hints = typing.get_type_hints(cls.OPTIONS)
        for f in fields(cls.OPTIONS):
            flag = _flag(f)
            if flag in seen:
                continue
            seen.add(flag)
            hint = hints[f.name]
            default = f.default if f.default is not MISSING else None
            help_text = f.metadata.get("help", "")
            if default is not None:
                help_text += f" (default: {default})"
            kwargs: dict = {"dest": _dest(f), "default": None, "help": help_text.strip()}
            if hint is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                base = next(h for h in (typing.get_args(hint) or (hint,)) if h is not type(None))
                kwargs["type"] = seed if f.name == "seed" else base
                if "choices" in f.metadata:
                    kwargs["choices"] = f.metadata["choices"]
                else:
                    kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
            g.add_argument(flag, **kwargs)
        if cls.FLAG:
            flag, help_text = cls.FLAG
            g.add_argument(flag, action="store_true", dest=f"select_{cls.NAME}", help=help_text)


def estimator_options(args: argparse.Namespace, estimators: tuple[type[Estimator], ...]):
    """The options object of the chosen estimator from the flags that were given; a flag that belongs to
    another estimator only is a UserError naming it."""
    given = {}
    for cls in estimators:
        for f in fields(cls.OPTIONS):
            value = getattr(args, _dest(f), None)
            if value is not None:
                given[f.name] = (value, _flag(f))
    chosen = [c for c in estimators if (c.SELECT and c.SELECT in given) or getattr(args, f"select_{c.NAME}", False)]
    name = getattr(args, "estimator", None)
    if name is not None:
        cls = ESTIMATORS[name]
        if any(c is not cls for c in chosen):
            other = next(c for c in chosen if c is not cls)
            raise UserError(f"--estimator {name} contradicts {_chooser(other, given)}, which chooses {other.NAME}")
    elif len(chosen) > 1:
        raise UserError(f"{_chooser(chosen[0], given)} and {_chooser(chosen[1], given)} choose two estimators "
                        f"({chosen[0].NAME}, {chosen[1].NAME}); give one")
    else:
        cls = chosen[0] if chosen else estimators[0]
    own = {f.name for f in fields(cls.OPTIONS)}
    for key, (_, flag) in given.items():
        if key not in own:
            raise UserError(f"{flag} does not apply to the {cls.NAME} estimator")
    return cls.OPTIONS(**{k: v for k, (v, _) in given.items()})


def _chooser(cls: type[Estimator], given: dict) -> str:
    return given[cls.SELECT][1] if cls.SELECT and cls.SELECT in given else cls.FLAG[0]


# -- typed options from the flags -----------------------------------------------------------------------------

def model_spec(args: argparse.Namespace) -> ModelSpec:
    flags = {"T": args.T, "beta_schedule": args.beta_schedule, "beta_start": args.beta_start,
             "beta_end": args.beta_end, "mean_type": args.mean_type, "var_type": args.var_type}
    if args.model is not None:
        diffusion_from_flags(flags)  # an impossible value names its flag before anything is loaded
    return ModelSpec(ckpt=args.ckpt, model=args.model, weights=args.weights, diffusion_flags=flags,
                     flags=args.flags)


def data_spec(args: argparse.Namespace) -> DataSpec:
    return DataSpec(args.data, args.data_root, args.num_images)


def execution(args: argparse.Namespace) -> Execution:
    return Execution(device=args.device, precision=args.precision, channels_last=args.channels_last,
                     compile=args.compile)


def run_options(args: argparse.Namespace, out: str | None = None) -> RunOptions:
    return RunOptions(out=args.out if out is None else out, force=args.force, batch_size=args.batch_size,
                      shard_size=args.shard_size, dry_run=getattr(args, "dry_run", False),
                      progress=not args.no_progress)
