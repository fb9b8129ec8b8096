"""Progress of a sweep: a tqdm bar of run-steps on stderr, fed from inside the compiled loop by
host callbacks (one token per chunk, so concurrent sweeps never mix their counts) and made exact
on the host when each chunk ends."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import jax

__all__ = ["Progress", "report"]

_SINKS: dict[int, Callable[[int], None]] = {}  # token -> sink, while a sweep is running
_SINKS_LOCK = threading.Lock()
_TOKENS = itertools.count(1)


def report(token, delta) -> None:
    """The host callback of the compiled loop: `delta` more run-steps for chunk `token`."""
    sink = _SINKS.get(int(token))
    if sink is not None:
        sink(int(delta))


class Progress:
    """The bar of one sweep (a context manager; shown only when asked, on process 0).

    ``token()`` gives each dispatched chunk its token; the kernel reports the run-steps done
    under it; ``chunk_done`` replaces those reports by the exact count of the chunk (runs that
    stopped early, padding, and the reports of other hosts) once its results are on the host.
    """

    def __init__(self, show: bool, n_runs: int, max_steps: int):
        self.max_steps = max_steps
        self.lock = threading.Lock()
        self.reported: dict[int, int] = {}  # token -> run-steps reported from inside
        self.tokens: list[int] = []
        self.bar = None
        if show and jax.process_index() == 0:
            from tqdm import tqdm

            self.bar = tqdm(
                total=n_runs * max_steps,
                unit="step",
                unit_scale=True,
                desc=f"sweep {n_runs} runs",
                dynamic_ncols=True,
                leave=True,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        with _SINKS_LOCK:
            for token in self.tokens:
                _SINKS.pop(token, None)
        if self.bar is not None:
            self.bar.close()

    def token(self) -> int:
        """A new token for a chunk about to be dispatched (its reports go to this bar)."""
        token = next(_TOKENS)
        self.tokens.append(token)
        if self.bar is not None:
            with _SINKS_LOCK:
                _SINKS[token] = self._sink(token)
        return token

    def _sink(self, token: int) -> Callable[[int], None]:
        scale = jax.process_count()  # reports come from this process's devices only

        def sink(delta: int) -> None:
            with self.lock:
                self.reported[token] = self.reported.get(token, 0) + delta * scale
                self.bar.update(delta * scale)

        return sink

    def chunk_done(self, token: int, runs: int, runs_done: int, chunk: int, n_chunks: int):
        """Chunk number `chunk` (0-based, `runs` runs; `runs_done` runs finished in all) is on
        the host: count it exactly."""
        if self.bar is None:
            return
        with _SINKS_LOCK:
            _SINKS.pop(token, None)
        with self.lock:
            self.bar.update(runs * self.max_steps - self.reported.pop(token, 0))
            total = self.bar.total // self.max_steps
            self.bar.set_postfix_str(f"runs {runs_done}/{total}, chunk {chunk + 1}/{n_chunks}")
