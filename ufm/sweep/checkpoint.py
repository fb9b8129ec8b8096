"""Crash-safe files: atomic writes (temporary file, fsync, rename) and the checkpoint directory of
a sweep: one file per finished chunk, and the state of the chunk in progress (parameters,
optimizer state, steps, history so far), from which the same call resumes."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable

import numpy as np

from ufm.sweep.plan import config_hash

__all__ = ["FORMAT", "atomic_write", "Checkpoint"]

FORMAT = "ufm.sweep/1"  # the format tag of sweep files and checkpoints


def atomic_write(path: str, write: Callable) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over `path`:
    a reader sees the old file or the whole new one, never a part."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class Checkpoint:
    """A directory: ``sweep.json`` (configuration, its hash, chunking), one
    ``chunk-NNNNNN.npz`` per finished chunk and ``state-NNNNNN.npz``, the state of a chunk in
    progress (every run's loop state and history after some steps), each written atomically.

    Opening the directory of another sweep (another configuration hash) raises ValueError naming
    the differing keys; a file that cannot be read is reported (a warning naming it) and its
    chunk recomputed, never trusted.
    """

    def __init__(self, path, config: dict, chunk: int, n_runs: int, writer: bool):
        self.path = os.fspath(path)
        self.writer = writer
        h = config_hash(config)
        meta_path = os.path.join(self.path, "sweep.json")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"checkpoint={self.path!r} exists and is not a directory")
        if os.path.exists(meta_path):
            old = self._read_meta(meta_path)
            if old.get("hash") != h:
                before = old.get("config", {})
                differ = sorted(
                    k for k in set(config) | set(before) if config.get(k) != before.get(k)
                )
                raise ValueError(
                    f"checkpoint={self.path!r} holds a different sweep (configuration hash "
                    f"{str(old.get('hash'))[:12]} != {h[:12]}; differing: {', '.join(differ)}); "
                    "refusing to mix results: pass another checkpoint path or delete this one"
                )
            self.chunk = int(old["chunk_size"])  # resume with the same chunks: identical results
        else:
            self.chunk = chunk
            if writer:
                os.makedirs(self.path, exist_ok=True)
                meta = {"format": FORMAT, "hash": h, "config": config, "chunk_size": chunk}
                meta["n_runs"] = n_runs
                atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))

    def _read_meta(self, meta_path: str) -> dict:
        try:
            with open(meta_path) as f:
                old = json.load(f)
            int(old["chunk_size"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"checkpoint={self.path!r}: {meta_path} is not a readable ufm checkpoint "
                f"({type(e).__name__}: {e}); delete the directory to start afresh"
            ) from None
        return old

    def file(self, k: int) -> str:
        """The file of chunk k."""
        return os.path.join(self.path, f"chunk-{k:06d}.npz")

    def state_file(self, k: int) -> str:
        """The file of chunk k's state in progress."""
        return os.path.join(self.path, f"state-{k:06d}.npz")

    def _read(self, path: str, start: int, stop: int) -> dict[str, np.ndarray] | None:
        """The arrays of a chunk or state file for runs start..stop, or None (with a warning
        naming the file when it exists but cannot be used)."""
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                out = {name: z[name] for name in z.files}
            span = int(out.pop("__start")), int(out.pop("__stop"))
        except Exception as e:  # noqa: BLE001 - any unreadable file is recomputed
            return _unusable(path, f"is unreadable ({type(e).__name__}: {e})")
        if span != (start, stop):
            return _unusable(path, f"holds runs {span[0]}..{span[1]}, not {start}..{stop}")
        return out

    def load(self, k: int, start: int, stop: int) -> dict[str, np.ndarray] | None:
        """Chunk k's saved outputs (runs start..stop), or None when it must be computed."""
        return self._read(self.file(k), start, stop)

    def save(self, k: int, start: int, stop: int, out: dict[str, np.ndarray]) -> None:
        """Write chunk k's outputs (runs start..stop) atomically (by the writing process), and
        drop its state in progress."""
        if self.writer:
            arrays = dict(out, __start=np.asarray(start), __stop=np.asarray(stop))
            atomic_write(self.file(k), lambda f: np.savez(f, **arrays))
            if os.path.exists(self.state_file(k)):
                os.remove(self.state_file(k))

    def load_state(
        self, k: int, start: int, stop: int, like: list[tuple[tuple[int, ...], np.dtype]]
    ) -> tuple[int, list[np.ndarray]] | None:
        """Chunk k's state in progress: (steps reached, the carry's leaves for runs
        start..stop), checked against `like` (per leaf: shape without the run axis, dtype);
        None when there is none or it cannot be used (then the chunk starts afresh)."""
        path = self.state_file(k)
        out = self._read(path, start, stop)
        if out is None:
            return None
        leaves = [out.get(f"leaf/{i}") for i in range(len(like))]
        ok = "__pos" in out and len(out) == len(like) + 1
        ok = ok and all(
            x is not None and x.shape == (stop - start, *shape) and x.dtype == dtype
            for x, (shape, dtype) in zip(leaves, like, strict=True)
        )
        if not ok:
            return _unusable(path, "does not hold the state of this sweep's chunk")
        return int(out["__pos"]), leaves

    def save_state(self, k: int, start: int, stop: int, pos: int, leaves: list) -> None:
        """Write chunk k's state after `pos` steps (the carry's leaves, runs start..stop)."""
        if self.writer:
            arrays = {f"leaf/{i}": np.asarray(x) for i, x in enumerate(leaves)}
            arrays.update(__start=np.asarray(start), __stop=np.asarray(stop), __pos=np.asarray(pos))
            atomic_write(self.state_file(k), lambda f: np.savez(f, **arrays))


def _unusable(path: str, why: str) -> None:
    warnings.warn(f"checkpoint file {path} {why}; recomputing its chunk", RuntimeWarning,
                  stacklevel=3)  # fmt: skip
    return None
