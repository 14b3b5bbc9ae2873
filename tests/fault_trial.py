"""A fault trial: every class of fault, a sample of cases each, against the commands as a user runs them.

Each case applies a fault to a run (a SIGKILL at a random moment, a second process on the same --out, a
damaged or replaced output file, a content check deleted or a summary edited with its hash recomputed, a
full or read-only disk, a model or input changed between run and resume, bad flags, a diffusers directory
whose configs are broken, a training run with `[training.eval]` killed or its eval.csv edited) and checks the outcome: the same bytes as an undisturbed run (after the same command is run
again), or a one-line refusal with exit status 2 (bad input) or 1 (the environment); never a traceback,
never a silently different number.

    PYTHONPATH=. python tests/fault_trial.py --cases 3 --seed 0 [--workdir DIR]

Run by `tests/test_fault_trial.py` (slow suite, `tox -e slow`). Prints one line per case and a tally;
exits 1 when a case ends otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLOW = "tests/scale_plugins.py:slow_tiny_conv_T20"
TINY = "tests/plugins.py:tiny_conv_T20"
TRAIN_RECIPE = """
[model]
image_size = 8
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = [4]
dropout = 0.1

[diffusion]
T = 20

[training]
data = "{data}"
steps = 8
batch_size = 4
warmup = 2
ema_decay = 0.9
log_every = 1
ckpt_every = 2
keep_last = 8

[training.eval]
every = 2
data = "{held_out}"
images = 3
terms = 2
"""  # a tiny run whose every second step is a checkpoint and an evaluation


def cli(*args, timeout: float = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ddpm_bench", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "ddpm_bench", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def digest(folder: Path, names: tuple[str, ...]) -> str:
    """sha256 of the numbers a run produced (arrays of .npz files, selected JSON keys), not of timings."""
    h = hashlib.sha256()
    for name in names:
        path = folder / name
        if path.suffix == ".npz":
            with np.load(path) as z:
                for k in sorted(z.files):
                    if k not in ("seconds", "content_sha256"):
                        h.update(k.encode() + np.ascontiguousarray(z[k]).tobytes())
        else:
            obj = json.loads(path.read_text())
            h.update(json.dumps({k: obj[k] for k in ("total_bpd", "total_bpd_stderr", "fid") if k in obj},
                                sort_keys=True).encode())
    return h.hexdigest()


def refusal(p: subprocess.CompletedProcess) -> str | None:
    """Why `p` is not a clean one-line refusal (None when it is one)."""
    if "Traceback" in p.stderr or "internal error" in p.stderr:
        return "traceback"
    if p.returncode not in (1, 2):
        return f"exit status {p.returncode}"
    errors = [line for line in p.stderr.splitlines() if line.startswith("ddpm-bench") and "warning" not in line]
    return None if len(errors) == 1 else f"{len(errors)} error lines"


class Trial:
    def __init__(self, work: Path, seed: int):
        self.work, self.rng = work, random.Random(seed)
        self.results: list[tuple[str, str, str]] = []  # (class, case, outcome or problem)
        data = np.random.default_rng(seed).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
        self.data = work / "data.npz"
        np.savez(self.data, data)
        self.nll_args = ["nll", "--model", SLOW, "--T", "20", "--data", self.data, "--shard-size", "1",
                         "--batch-size", "20", "--no-progress"]
        self.sample_args = ["sample", "--model", SLOW, "--T", "20", "--image-size", "8", "--num", "6", "--shard-size",
                            "2", "--progressive-every", "5", "--no-progress"]
        self.clean = {}
        for name, args, files in (("nll", self.nll_args, ("per_image.npz", "summary.json")),
                                  ("sample", self.sample_args, ("samples_000000.npz", "samples_000001.npz",
                                                                "samples_000002.npz", "progressive.npz"))):
            out = work / f"clean-{name}"
            p = cli(*args, "--out", out)
            assert p.returncode == 0, p.stderr
            self.clean[name] = (args, files, digest(out, files))

    def record(self, kind: str, case: str, problem: str | None) -> None:
        self.results.append((kind, case, problem or "ok"))
        print(f"{'ok  ' if problem is None else 'FAIL'} {kind:14s} {case}" + (f": {problem}" if problem else ""),
              flush=True)

    def same_as_clean(self, name: str, out: Path) -> str | None:
        args, files, want = self.clean[name]
        p = cli(*args, "--out", out)
        if p.returncode != 0:
            return f"rerun exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"
        return None if digest(out, files) == want else "the rerun gave other numbers"

    # -- the classes -------------------------------------------------------------------------------------------

    def kills(self, n: int) -> None:
        for name in ("nll", "sample"):
            args = self.clean[name][0]
            for c in range(n):
                out = self.work / f"kill-{name}-{c}"
                proc = start(*args, "--out", out)
                time.sleep(self.rng.uniform(0.0, 3.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                self.record("kill", f"{name} #{c}", self.same_as_clean(name, out))

    def concurrent(self, n: int) -> None:
        for c in range(n):
            out = self.work / f"twice-{c}"
            first = start(*self.nll_args, "--out", out)
            time.sleep(1.0)
            second = cli(*self.nll_args, "--out", out)
            first.wait()
            problem = refusal(second) if second.returncode != 0 else None
            if problem is None and second.returncode == 0 and first.returncode != 0:
                problem = "the second process ran while the first held the directory"
            self.record("concurrent", f"#{c}", problem or self.same_as_clean("nll", out))

    def damaged(self, n: int) -> None:
        for name in ("nll", "sample"):
            clean = self.work / f"clean-{name}"
            files = [p.name for p in clean.rglob("*") if p.is_file() and p.name not in (".lock", "run.json")]
            for c in range(n):
                out = self.work / f"damaged-{name}-{c}"
                shutil.copytree(clean, out)
                victim = out / self.rng.choice(sorted(files))
                how = self.rng.choice(["flip", "cut", "other"])
                data = bytearray(victim.read_bytes())
                if how == "flip" and data:
                    i = self.rng.randrange(len(data))
                    data[i] ^= 0x5A
                elif how == "cut":
                    data = data[: len(data) // 2]
                else:
                    data = bytearray(b"something else")
                victim.write_bytes(bytes(data))
                self.record("damaged file", f"{name}: {how} {victim.relative_to(out)}", self.same_as_clean(name, out))

    def readers(self) -> None:
        """A finished output edited, then read by gap, rate-distortion and fid: a one-line refusal."""
        nll = self.work / "clean-nll"
        for reader, args in (("gap", ["gap", nll, nll]), ("rate-distortion", ["rate-distortion", nll])):
            out = self.work / f"read-{reader}"
            shutil.copytree(nll, out)
            obj = json.loads((out / "summary.json").read_text())
            obj["total_bpd"] += 9.0
            (out / "summary.json").write_text(json.dumps(obj))
            extra = ["--out", self.work / f"read-{reader}-out"] if reader == "rate-distortion" else []
            p = cli(*[out if a == nll else a for a in args], *extra)
            self.record("edited output", f"read by {reader}", refusal(p))

    def content_checks(self) -> None:
        """A finished nll output whose content check was deleted, whose summary was edited with its hash
        computed again, or whose per_image.npz was changed with the summary's `files` and hash deleted: every
        reader refuses it in one line, and the same command computes it again (issue 28, causes 1 and 2)."""
        clean = self.work / "clean-nll"
        other_data, other = self.work / "other.npz", self.work / "other-nll"  # a second output, for `gap`
        np.savez(other_data, np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
        args = [a if a != self.data else other_data for a in self.nll_args]
        assert cli(*args, "--out", other).returncode == 0

        def unhashed(out: Path) -> None:
            obj = json.loads((out / "summary.json").read_text())
            obj["total_bpd"] = 1.234
            del obj["content_sha256"]
            (out / "summary.json").write_text(json.dumps(obj))

        def rehashed(out: Path) -> None:
            from ddpm_bench.shards import json_sha256  # the repository's (PYTHONPATH=.)

            obj = json.loads((out / "summary.json").read_text())
            obj["total_bpd"] = 1.234
            obj["content_sha256"] = json_sha256(obj)
            (out / "summary.json").write_text(json.dumps(obj))

        def terms_doubled(out: Path) -> None:
            with np.load(out / "per_image.npz") as z:
                arrays = {k: z[k] for k in z.files}
            np.savez(out / "per_image.npz", **{**arrays, "terms": arrays["terms"] * 2})
            obj = json.loads((out / "summary.json").read_text())
            del obj["files"], obj["content_sha256"]
            (out / "summary.json").write_text(json.dumps(obj))

        for case, damage in (("content check deleted", unhashed), ("summary edited, hash recomputed", rehashed),
                             ("per_image.npz changed, files and hash deleted", terms_doubled)):
            out = self.work / f"content-{damage.__name__}"
            shutil.copytree(clean, out)
            damage(out)
            for reader, args in (("gap", ["gap", other, out, "--same-distribution"]),
                                 ("rate-distortion", ["rate-distortion", out, "--out", out.with_name(out.name + "-rd")]),
                                 ("report", ["report", out, "--out", out.with_name(out.name + "-report")])):
                p = cli(*args)
                self.record("content check", f"{case}: read by {reader}",
                            refusal(p) or (None if p.returncode == 2 else f"exit status {p.returncode}"))
            self.record("content check", f"{case}: rerun", self.same_as_clean("nll", out))

    def diffusers_configs(self) -> None:
        """A diffusers directory or Hub snapshot with a broken scheduler config, none, or a UNet config that
        does not describe its weights: one line, exit 2 (issue 28, cause 3)."""
        try:
            import diffusers
            import torch
        except ImportError:
            self.record("diffusers config", "diffusers not installed", None)  # nothing to try here
            return
        commit = "0123456789abcdef0123456789abcdef01234567"
        for c, (case, where) in enumerate((("not UTF-8", "dir"), ("a JSON array", "dir"), ("missing", "dir"),
                                           ("missing", "hub"), ("UNet config of other widths", "hub"),
                                           ("UNet config with attention", "dir"))):
            root = self.work / f"diffusers-{c}"
            repo = root / "hub" / "models--org--tiny-ddpm"
            model = repo / "snapshots" / commit if where == "hub" else root / "m"
            torch.manual_seed(0)
            diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                  block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4
                                  ).save_pretrained(model / "unet")
            diffusers.DDPMScheduler(num_train_timesteps=20).save_pretrained(model / "scheduler")
            scheduler, unet = model / "scheduler" / "scheduler_config.json", model / "unet" / "config.json"
            if case == "not UTF-8":
                scheduler.write_bytes(b"\xff\xfe" + scheduler.read_bytes())
            elif case == "a JSON array":
                scheduler.write_text("[1, 2, 3]")
            elif case == "missing":
                scheduler.unlink()
            else:
                change = {"block_out_channels": [16, 32]} if "widths" in case else \
                    {"down_block_types": ["DownBlock2D", "AttnDownBlock2D"]}
                unet.write_text(json.dumps({**json.loads(unet.read_text()), **change}))
            env = {}
            if where == "hub":
                (repo / "refs").mkdir(parents=True)
                (repo / "refs" / "main").write_text(commit)
                env = {"HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1"}
            p = cli("nll", "--ckpt", "hf:org/tiny-ddpm" if where == "hub" else model, "--data", self.data,
                    "--no-progress", "--out", root / "out", env_extra=env)
            lines = [line for line in p.stderr.splitlines() if line.strip() and "warning" not in line]
            self.record("diffusers config", f"{where}: scheduler config {case}" if "UNet" not in case
                        else f"{where}: {case}", refusal(p) or (f"exit {p.returncode}" if p.returncode != 2 else
                                                                None if len(lines) == 1 else f"{len(lines)} lines"))

    def training_eval(self, n: int) -> None:
        """A training run with [training.eval] killed at a random moment, an eval.csv row edited, a row cut:
        after the same command, eval.csv holds the rows of a run that never stopped (issue 28, cause 4)."""
        recipe = self.work / "train.toml"
        held_out = self.work / "held_out.npz"
        np.savez(held_out, np.random.default_rng(7).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
        recipe.write_text(TRAIN_RECIPE.format(data=self.data, held_out=held_out))
        args = ["train", "--recipe", recipe, "--no-progress", "--device", "cpu"]

        def evaluations(run: Path) -> dict:
            rows = [r.split(",") for r in (run / "eval.csv").read_text().splitlines()[1:]]
            return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}  # not the seconds, not their hash

        clean = self.work / "train-clean"
        p = cli(*args, "--out", clean)
        assert p.returncode == 0, p.stderr
        want = evaluations(clean)

        def again(run: Path) -> str | None:
            p = cli(*args, "--out", run)
            if p.returncode != 0:
                return f"rerun exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"
            return None if evaluations(run) == want else "eval.csv differs from the run that never stopped"

        for c in range(n):
            run = self.work / f"train-kill-{c}"
            proc = start(*args, "--out", run)
            time.sleep(self.rng.uniform(3.0, 12.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.record("training eval", f"kill #{c}", again(run))
        for case in ("edited bpd", "cut row"):
            run = self.work / f"train-{case.replace(' ', '-')}"
            shutil.copytree(clean, run)
            lines = (run / "eval.csv").read_text().splitlines()
            if case == "edited bpd":
                i = 1 + self.rng.randrange(len(lines) - 1)
                lines[i] = ",".join([lines[i].split(",")[0], "1.234", *lines[i].split(",")[2:]])
                text = "\n".join(lines) + "\n"
            else:
                text = "\n".join(lines)[:-self.rng.randrange(1, 20)]
            (run / "eval.csv").write_text(text)
            self.record("training eval", case, again(run))

    def disks(self) -> None:
        """A full and a read-only disk: one line, exit 1; after space is freed the same command finishes."""
        for options, case in (("size=24k", "full"), ("ro,size=64k", "read-only")):
            mount = self.work / f"disk-{case}"
            mount.mkdir()
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
            if r.returncode != 0:
                self.record("disk", case, None)  # cannot mount here: nothing to try
                continue
            try:
                p = cli(*self.sample_args, "--out", mount / "s")
                self.record("disk", case, refusal(p) if p.returncode != 0 else "a write to a full disk succeeded")
            finally:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)

    def identity_changes(self) -> None:
        """Another seed, another model, the same model with changed code: refused, or a new run with --force."""
        out = self.work / "identity"
        shutil.copytree(self.work / "clean-nll", out)
        for case, args in (("seed", [*self.nll_args, "--seed", "1"]),
                           ("model", [*[a if a != SLOW else TINY for a in self.nll_args]])):
            p = cli(*args, "--out", out)
            self.record("identity change", case, refusal(p))

    def bad_flags(self) -> None:
        cases = [["nll", "--model", TINY, "--T", "0", "--data", self.data, "--out", self.work / "b1"],
                 ["nll", "--model", TINY, "--T", "20", "--data", self.data, "--num-image", "2", "--out", self.work / "b2"],
                 ["sample", "--model", TINY, "--num", "2", "--eta", "nan", "--sampler", "ddim", "--out", self.work / "b3"],
                 ["gap", self.work / "clean-nll", self.work / "clean-nll", "--max-gap", "inf"],
                 ["nll", "--model", TINY, "--T", "20", "--data", self.data, "--draws", str(2**63), "--out", self.work / "b4"]]
        for args in cases:
            self.record("bad flag", " ".join(map(str, args[:1] + args[-2:])), refusal(cli(*args)))


def run_trial(work: Path, cases: int, seed: int) -> list[tuple[str, str, str]]:
    trial = Trial(work, seed)
    steps: list[Callable[[], None]] = [lambda: trial.kills(cases), lambda: trial.concurrent(max(1, cases // 2)),
                                       lambda: trial.damaged(cases), trial.readers, trial.content_checks,
                                       trial.diffusers_configs, lambda: trial.training_eval(cases), trial.disks,
                                       trial.identity_changes, trial.bad_flags]
    for step in steps:
        step()
    return trial.results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=3, help="cases per fault class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    a = p.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="fault-trial-"))
    work.mkdir(parents=True, exist_ok=True)
    results = run_trial(work, a.cases, a.seed)
    failed = [r for r in results if r[2] != "ok"]
    print(f"{len(results) - len(failed)} of {len(results)} cases held")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
