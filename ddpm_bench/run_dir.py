"""The run lifecycle, one implementation for every command that writes an `--out` directory.

1. **Claim** (`claim`): `--out` is locked with `fcntl.flock` on `OUT/.lock` (the pid of the holder written
   in it) for as long as the process lives; a second process on the same `--out`, with `--force` or not,
   stops with exit 2 naming the holder's pid. Within one process a claim is re-entrant (`reproduce` trains
   into the directory it claimed).
2. **Manifest** (`run.json`): the command and its identity (a JSON object of everything that changes the
   numbers: model identity, data hash, typed options), and `run_id`, the sha256 of both. A directory is
   resumed only when its `run_id` is the same; another existing non-empty directory is refused (exit 2,
   naming the first differences) unless `--force` empties it.
3. **Shards** (`ShardPlan`, `RunDir.write_shard`, `RunDir.read_shard`): items [s * size, (s + 1) * size)
   form shard s; rank r owns the shards with s % world == r; which are missing is decided once (on rank
   0) and shared. Each shard file carries the `run_id` of its run and its item numbers and is checked
   whenever it is read, at resume and at merge: a shard of another run, of other items, cut off or
   unreadable is refused by name, never merged.
4. **Phases** (`phase`): every rank runs the body, then all agree (`distributed.agree`): a failure on
   one rank stops every rank; `PeerFailed` is handled once, in the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_bench import distributed
from ddpm_bench.arguments import given, named, switch
from ddpm_bench.errors import OutputDirError, UserError
from ddpm_bench.identity import sha256_json
from ddpm_bench.messages import warn
from ddpm_bench.shards import CONTENT, arrays_sha256, atomic_write_json, atomic_write_npz, read_json, to_json
from ddpm_bench.version import __version__

MANIFEST = "run.json"
LOCK = ".lock"
MANIFEST_FORMAT = "ddpm-bench-run/1"
RUN_ID = "run_id"  # the key of the run identity inside every shard file
INDEX = "index"  # the item numbers inside every shard file

_held: dict[tuple[int, int], int] = {}  # (device, inode) of a lock file this process holds -> its fd
_lock_paths: dict[tuple[int, int], Path] = {}  # the same keys -> where the lock file is


class SettingsChanged(OutputDirError):
    """`--out` holds a run of the same command with other settings (`differences` names them)."""

    def __init__(self, out: Path, differences: str):
        self.out, self.differences = out, differences
        super().__init__(f"{given('out', out)}: holds a run with other settings ({differences}); use another "
                         f"directory or {switch('force')}")


class ModelChanged(OutputDirError):
    """The model of a run to resume computes something else than when the run started."""


@dataclass(frozen=True)
class Fingerprint:
    """What a model computes, in a few numbers (`Network.fingerprint`), kept in run.json beside the
    identity (not part of it: float rounding may move it) and compared when the run is resumed."""

    values: list
    differs: Callable[[list, list], float | None]  # (stored, now) -> None when the same function


class ShardError(OutputDirError):
    """A shard file that does not belong to its run (another run, other items, cut off, unreadable)."""

    def __init__(self, path: Path, problem: str, hint: str = "delete it to recompute it"):
        self.problem = f"{path}: {problem}"
        super().__init__(f"{self.problem}; {hint}")


def run_id_of(command: str, identity: dict) -> str:
    return sha256_json({"command": command, "identity": identity})


def normalise(identity: Any) -> Any:
    """The JSON form of an identity (tuples -> lists, numpy -> python), as it reads back from run.json."""
    return json.loads(to_json(identity))


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'key: old -> new' for each leaf that differs between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += differences(old.get(k, "<missing>"), new.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def describe_differences(old: Any, new: Any, limit: int = 3) -> str:
    diffs = differences(old, new)
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


@dataclass(frozen=True)
class RunOptions:
    """Where and how a run is kept: its directory (None: in memory, nothing written), whether to empty it,
    the batch size (None: the command's default for the device; it may move float32 rounding only, so it is
    not part of a run's identity), the shard size (None: the command's default; it is part of the
    identity, since it decides which items share a network call), a dry run, a progress bar."""

    out: str | None = None
    force: bool = False
    batch_size: int | None = None
    shard_size: int | None = None
    dry_run: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.out is not None and not str(self.out).strip():
            raise OutputDirError(f"{named('out')}: empty")
        for flag, value in ((named("batch_size"), self.batch_size), (named("shard_size"), self.shard_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"{flag} must be at least 1, got {value}")


# -- the lock ------------------------------------------------------------------------------------------------

def _holder(lock_path: Path) -> str:
    for _ in range(20):  # the holder writes its pid right after it takes the lock
        try:
            text = lock_path.read_text().strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "unknown pid"


def lock_dir(out: Path) -> None:
    """Take the exclusive lock of `out` (created if missing) for the life of this process."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputDirError(f"{given('out', out)}: exists and is not a directory") from None
    except NotADirectoryError:
        raise OutputDirError(f"{given('out', out)}: a parent of it is a file, not a directory") from None
    if not out.is_dir():
        raise OutputDirError(f"{given('out', out)}: exists and is not a directory")
    lock_path = out / LOCK
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in _held:  # already ours (re-entrant within one process, also after a move of the directory)
            os.close(fd)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputDirError(f"{given('out', out)}: in use by another ddpm-bench process ({_holder(lock_path)}); "
                                     "wait for it to finish or use another directory") from None
            raise
        try:  # the file locked is still the one at lock_path (a releasing holder removes it: then try again)
            same = os.stat(lock_path).st_ino == st.st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}\n".encode())
    _held[key] = fd
    _lock_paths[key] = lock_path


def release(out: str | Path) -> None:
    """Give up this process's lock of `out` and remove its lock file (a finished run leaves none behind)."""
    try:
        st = os.stat(Path(out) / LOCK)
    except OSError:
        return
    _release((st.st_dev, st.st_ino))


def _release(key: tuple[int, int]) -> None:
    fd = _held.pop(key, None)
    path = _lock_paths.pop(key, None)
    if fd is None:
        return
    if path is not None:  # removed while still held: whoever opened it meanwhile sees it gone and opens anew
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == key[1]:
                os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def released_after():
    """Every lock this process takes inside is given up (and its file removed) when the block ends: a
    library call leaves no directory locked behind it (a notebook's process lives on)."""
    before = set(_held)
    try:
        yield
    finally:
        for key in [k for k in _held if k not in before]:
            _release(key)


# -- the directory -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunDir:
    """A claimed output directory: where it is, which run it holds, and whether that run was resumed."""

    path: Path
    command: str
    run_id: str
    resumed: bool

    def write_shard(self, name: str, index: np.ndarray, **arrays: np.ndarray) -> None:
        """Write a shard atomically, with this run's id, the item numbers it holds and its content hash."""
        write_shard(self.path / name, self.run_id, index, **arrays)

    def read_shard(self, name: str, index: np.ndarray, keys: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        """The arrays `keys` of a shard, after checking that it is whole, of this run and of these items."""
        return read_shard(self.path / name, self.run_id, index, keys)

    def shard_is_valid(self, name: str, index: np.ndarray, keys: tuple[str, ...], say: bool = True) -> bool:
        """Whether the shard is there, whole, of this run and of these items. One that is there but does not
        belong is named in a warning (with `say`): the caller computes it again, never merges it."""
        if not (self.path / name).exists():
            return False
        try:
            self.read_shard(name, index, keys)
            return True
        except ShardError as e:
            if say:
                warn(f"{e.problem}; computing it again")
            return False


def write_shard(path: Path, run_id: str, index: np.ndarray, **arrays: np.ndarray) -> None:
    """A shard file: its arrays, the run's id, its item numbers and the content hash of all of them."""
    arrays = {**arrays, INDEX: np.asarray(index, dtype=np.int64), RUN_ID: np.array(run_id)}
    atomic_write_npz(path, **arrays, **{CONTENT: np.array(arrays_sha256(arrays))})


def read_shard(path: Path, run_id: str, index: np.ndarray, keys: tuple[str, ...] | None,
               require_content_hash: bool = True) -> dict[str, np.ndarray]:
    """See `RunDir.read_shard` (`keys` None: every array of the shard); ShardError (exit 2) naming the file
    and what is wrong: another run's, other items, cut off, or content that is not what was written (its
    content hash; a shard of an earlier version without one only with `require_content_hash` False)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            everything = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ShardError(path, "missing", "run the same command again to compute it") from None
    except Exception as e:
        raise ShardError(path, f"unreadable or cut-off shard ({type(e).__name__}: {e})") from None
    recorded = everything.pop(CONTENT, None)
    if recorded is None and require_content_hash:
        raise ShardError(path, "holds no content hash (not written by this version of ddpm-bench)")
    if recorded is not None and str(recorded) != arrays_sha256(everything):
        raise ShardError(path, "its content is not what was written (content hash differs): changed since; "
                               "refused, never merged")
    want = tuple(k for k in everything if k not in (INDEX, RUN_ID)) if keys is None else keys
    missing = [k for k in (*want, INDEX, RUN_ID) if k not in files]
    if missing:
        raise ShardError(path, f"not a shard of this run (no {', '.join(missing)})")
    got = {k: everything[k] for k in (*want, INDEX, RUN_ID)}
    if str(got.pop(RUN_ID)) != run_id:
        raise ShardError(path, "belongs to another run (run_id differs: other model, data, seed or settings); "
                               "refused, never merged")
    have = got.pop(INDEX)
    if not np.array_equal(have, index):
        raise ShardError(path, f"holds items {_span(have)}, not {_span(index)}; refused")
    for k, v in got.items():
        if (v.ndim == 0 and keys is not None) or (v.ndim > 0 and v.shape[0] != len(index)):
            raise ShardError(path, f"'{k}' has {v.shape[0] if v.ndim else 0} rows for {len(index)} items")
    return got


def _span(index: np.ndarray) -> str:
    return f"{int(index[0])}..{int(index[-1])}" if len(index) else "none"


def claim(out: str | Path, command: str, identity: dict, *, force: bool = False,
          upgrade: Callable[[dict], dict] | None = None, fingerprint: Fingerprint | None = None) -> RunDir:
    """Lock `out` and make it hold the run (`command`, `identity`): a new run in a missing or empty
    directory, the same run resumed, or (with `force`) a new run in an emptied directory. Anything else is
    an OutputDirError (exit 2) that names the difference. `upgrade` maps an identity written by an earlier
    version to today's form (settings added since at their defaults); a run whose upgraded identity is
    this one is resumed and its run.json rewritten (only for runs whose files do not carry the run_id).
    `fingerprint` (what the model computes) is stored with a new run and compared when one is resumed: a
    model that computes something else is refused (ModelChanged), whatever its files say."""
    out = Path(out)
    identity = normalise(identity)
    run_id = run_id_of(command, identity)
    lock_dir(out)
    manifest = out / MANIFEST
    for tmp in out.glob(f".{MANIFEST}.*.tmp"):  # the very first write, of run.json, cut short by a kill
        tmp.unlink(missing_ok=True)
    content = [p for p in out.iterdir() if p.name != LOCK]
    if content and force and manifest.is_file():  # --force never empties another command's run
        try:
            other = json.loads(manifest.read_text()).get("command")
        except (OSError, ValueError, AttributeError):
            other = None  # an unreadable manifest: --force may start over
        if isinstance(other, str) and other != command:
            raise OutputDirError(f"{given('out', out)}: holds a '{other}' run; {switch('force')} empties only a '{command}' run's "
                                 "directory, never another command's: use another directory")
    if content and force:
        for p in content:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        content = []
    if content:
        if not manifest.is_file():
            raise OutputDirError(f"{given('out', out)}: directory exists and is not empty; use another directory or "
                                 f"{switch('force')}")
        old = read_manifest(out)
        if old["run_id"] == run_id:
            _check_fingerprint(out, old, fingerprint)
            remove_stale_temporaries(out)
            if old.get("ddpm_bench_version") != __version__:
                warn(f"{out / MANIFEST} was written by ddpm-bench {old.get('ddpm_bench_version')}, this is "
                     f"{__version__}; resuming its shards (same identity)")
            return RunDir(out, command, run_id, resumed=True)
        if old["command"] != command:
            raise OutputDirError(f"{given('out', out)}: holds a '{old['command']}' run, not '{command}'; "
                                 f"use another directory or {switch('force')}")
        if upgrade is not None and normalise(upgrade(old["identity"])) == identity:
            warn(f"{out / MANIFEST} was written by ddpm-bench {old.get('ddpm_bench_version')}; the settings added "
                 f"since take their defaults ({describe_differences(old['identity'], identity)}); resuming it")
            remove_stale_temporaries(out)
            write_manifest(out, command, run_id, identity, fingerprint)
            return RunDir(out, command, run_id, resumed=True)
        raise SettingsChanged(out, describe_differences(old["identity"], identity))
    write_manifest(out, command, run_id, identity, fingerprint)
    return RunDir(out, command, run_id, resumed=False)


def write_manifest(out: Path, command: str, run_id: str, identity: dict, fingerprint: Fingerprint | None) -> None:
    m = {"format": MANIFEST_FORMAT, "command": command, "run_id": run_id, "identity": identity,
         "ddpm_bench_version": __version__}
    if fingerprint is not None:
        m["fingerprint"] = fingerprint.values
    atomic_write_json(out / MANIFEST, m)


def _check_fingerprint(out: Path, old: dict, fingerprint: Fingerprint | None) -> None:
    """Refuse to resume with a model that computes something else; give a run of an earlier version (no
    fingerprint stored) this one."""
    if fingerprint is None:
        return
    stored = old.get("fingerprint")
    if not isinstance(stored, list):
        write_manifest(out, old["command"], old["run_id"], old["identity"], fingerprint)
        return
    diff = fingerprint.differs(stored, fingerprint.values)
    if diff is not None:
        raise ModelChanged(f"{given('out', out)}: the model computes something else than when this run started (its outputs "
                           f"on a fixed probe differ by {diff:.3g} of their scale, more than rounding), although its "
                           "weights and settings are the same: its code or what it reads changed; refused, nothing "
                           f"mixed; use another directory or {switch('force')}")


def remove_stale_temporaries(out: Path) -> None:
    """Remove the temporary files of atomic writes that a killed run left (`.NAME.*.tmp`, never read as
    complete files), in a run directory of ours and its subfolders. Called under the lock, so no live write
    is removed."""
    for tmp in out.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def read_manifest(out: Path) -> dict:
    """run.json of `out`, checked; OutputDirError naming the file and field when it is garbage."""
    path = out / MANIFEST
    try:
        m = read_json(path)
    except (OSError, ValueError) as e:
        raise OutputDirError(f"{path}: unreadable ({type(e).__name__}: {e}); use another directory or "
                             f"{switch('force')}") from None
    if not isinstance(m, dict):
        raise OutputDirError(f"{path}: expected a JSON object, got {type(m).__name__}; use {switch('force')} to start "
                             "over")
    for key, kind in (("command", str), ("run_id", str), ("identity", dict)):
        if not isinstance(m.get(key), kind):
            raise OutputDirError(f"{path}: field '{key}' is missing or not a {kind.__name__} (written by another "
                                 f"version?); use another directory or {switch('force')}")
    if m.get("format") != MANIFEST_FORMAT or run_id_of(m["command"], m["identity"]) != m["run_id"]:
        raise OutputDirError(f"{path}: field 'run_id' does not match its identity, or format is not "
                             f"{MANIFEST_FORMAT!r}; use another directory or {switch('force')}")
    return m


def follow(out: str | Path, command: str, identity: dict) -> RunDir:
    """The RunDir of a run that rank 0 claimed (other ranks of a torchrun launch): no lock, no writes."""
    return RunDir(Path(out), command, run_id_of(command, normalise(identity)), resumed=True)


def claim_collective(out: str | Path, command: str, identity: dict, *, force: bool = False,
                     fingerprint: Fingerprint | None = None) -> RunDir:
    """`claim` on rank 0, `follow` on the others (call inside a `phase`)."""
    if distributed.is_main():
        return claim(out, command, identity, force=force, fingerprint=fingerprint)
    return follow(out, command, identity)


# -- the shard plan ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardPlan:
    """Items 0..n-1 in shards of `size`; shard s = [s * size, (s + 1) * size) whatever the process count."""

    n: int
    size: int

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"shard size must be at least 1, got {self.size}")

    @property
    def num_shards(self) -> int:
        return -(-self.n // self.size)

    def items(self, s: int) -> np.ndarray:
        return np.arange(s * self.size, min((s + 1) * self.size, self.n), dtype=np.int64)

    def ranges(self) -> list[np.ndarray]:
        return [self.items(s) for s in range(self.num_shards)]

    def owned(self, shards: list[int], rank: int | None = None, world: int | None = None) -> list[int]:
        """The shards of `shards` that rank `rank` of `world` computes: s % world == rank."""
        rank = distributed.rank() if rank is None else rank
        world = distributed.world_size() if world is None else world
        return [s for s in shards if s % world == rank]

    def missing(self, is_done) -> list[int]:
        """The shards for which `is_done(s)` is false, decided on rank 0 and shared with every rank."""
        mine = [s for s in range(self.num_shards) if not is_done(s)] if distributed.is_main() else None
        return distributed.broadcast(mine)


@contextlib.contextmanager
def phase() -> Iterator[None]:
    """Every rank runs the body; then all agree: this rank's own error is re-raised, or PeerFailed when
    another rank failed (see `distributed.agree`). In one process it only re-raises."""
    error = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - every failure must reach the other ranks
        error = e
    distributed.agree(error)
