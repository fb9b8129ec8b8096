"""Crash-safe files: atomic writes (temporary file, fsync, rename) and the checkpoint directory of
a sweep, one file per finished chunk, from which the same call resumes."""

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
    """A directory: ``sweep.json`` (configuration, its hash, chunking) and one
    ``chunk-NNNNNN.npz`` per finished chunk, each written atomically.

    Opening the directory of another sweep (another configuration hash) raises ValueError naming
    the differing keys; a chunk file that cannot be read is reported (a warning naming it) and
    its chunk recomputed, never trusted.
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

    def load(self, k: int, start: int, stop: int) -> dict[str, np.ndarray] | None:
        """Chunk k's saved outputs (runs start..stop), or None when it must be computed."""
        path = self.file(k)
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                out = {name: z[name] for name in z.files}
            span = int(out.pop("__start")), int(out.pop("__stop"))
        except Exception as e:  # noqa: BLE001 - any unreadable file is recomputed
            warnings.warn(
                f"checkpoint file {path} is unreadable ({type(e).__name__}: {e}); "
                "recomputing its chunk",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        if span != (start, stop):
            warnings.warn(
                f"checkpoint file {path} holds runs {span[0]}..{span[1]}, not {start}..{stop}; "
                "recomputing its chunk",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        return out

    def save(self, k: int, start: int, stop: int, out: dict[str, np.ndarray]) -> None:
        """Write chunk k's outputs (runs start..stop) atomically (by the writing process)."""
        if self.writer:
            arrays = dict(out, __start=np.asarray(start), __stop=np.asarray(stop))
            atomic_write(self.file(k), lambda f: np.savez(f, **arrays))
