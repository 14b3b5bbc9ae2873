"""The three numbers of one model, and the discrete bound's approach to the continuous one: for the packaged
discrete model (`embedded`) and the packaged continuous one (`embedded-continuous`), on the same test images,
the discrete bound (the DDPM's own chain at T = 1000, and VDM's T-step bound of the network for smaller T),
the continuous-time bound and the ODE likelihood, with standard errors over images, network evaluations and
seconds. Prints a Markdown table (for benchmarks/RESULTS.md and docs/likelihood.md).

    PYTHONPATH=. python benchmarks/bench_continuous.py --images 16 --ode-images 4
"""

from __future__ import annotations

import argparse
import time

import ddpm_bench


def row(model_name: str, what: str, result, seconds: float) -> str:
    se = result.total_bpd_stderr
    return (f"| {model_name} | {what} | {result.total_bpd:.3f} | {se:.3f} | {result.n_images} | "
            f"{result.summary.network_evals / result.n_images:,.0f} | {seconds / result.n_images:.2f} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--ode-images", type=int, default=4)
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="*", default=[10, 100, 1000])
    args = p.parse_args(argv)
    print("| model | estimate | bits/dim | s.e. | images | evaluations per image | seconds per image |")
    print("|---|---|---|---|---|---|---|")
    for name in ("embedded", "embedded-continuous"):
        model = ddpm_bench.load_model(name)
        runs = []
        if not model.convention.continuous:
            runs.append(("discrete bound, its own T = 1000 (exact)", {}, args.images))
        for T in args.steps:
            runs.append((f"VDM's {T}-step bound ({args.draws} draws)",
                         {"options": ddpm_bench.ContinuousOptions(draws=args.draws, steps=T)}, args.images))
        runs.append((f"continuous-time bound ({args.draws} draws)",
                     {"options": ddpm_bench.ContinuousOptions(draws=args.draws)}, args.images))
        runs.append(("ODE likelihood (rtol = atol = 1e-5)", {"options": ddpm_bench.OdeOptions()}, args.ode_images))
        for what, kwargs, n in runs:
            t0 = time.perf_counter()
            result = ddpm_bench.bound(model, "embedded:test", num_images=n, **kwargs)
            print(row(name, what, result, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
