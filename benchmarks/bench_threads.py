"""Threads per process: the bound's time at 1 and 2 torch threads, on an idle machine and beside a
competing process (another bound of the same size on the same cores, as when two runs share a machine).

    PYTHONPATH=. python benchmarks/bench_threads.py --images 2 --repeats 2

Each measurement runs `ddpm-bench nll --ckpt embedded` in a fresh process with `--threads N`, and prints
the wall time of the evaluation (summary.json `seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def nll(out: Path, threads: int | None, images: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "ddpm_bench", "nll", "--ckpt", "embedded", "--data", "embedded:test",
            "--num-images", str(images), "--no-progress", "--out", str(out), "--force"]
    if threads is not None:
        args += ["--threads", str(threads)]
    return subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def seconds(out: Path) -> float:
    return json.loads((out / "summary.json").read_text())["seconds"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_threads_"))
    print(f"{os.cpu_count()} CPUs; ddpm-bench nll --ckpt embedded, {a.images} images x 1000 terms; "
          f"median of {a.repeats}")
    print("| threads | idle: s | beside a competing bound (2 threads): s |")
    print("|---|---|---|")
    for threads in (1, 2):
        idle, loaded = [], []
        for r in range(a.repeats):
            proc = nll(work / f"idle{threads}{r}", threads, a.images)
            assert proc.wait() == 0, proc.stderr.read()
            idle.append(seconds(work / f"idle{threads}{r}"))
            other = nll(work / f"other{threads}{r}", 2, a.images * 3)  # runs longer than the measured one
            proc = nll(work / f"load{threads}{r}", threads, a.images)
            assert proc.wait() == 0, proc.stderr.read()
            other.kill()
            other.wait()
            loaded.append(seconds(work / f"load{threads}{r}"))
        print(f"| {threads} | {statistics.median(idle):.1f} | {statistics.median(loaded):.1f} |", flush=True)


if __name__ == "__main__":
    main()
