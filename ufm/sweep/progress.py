"""Progress of a sweep: a tqdm bar of run-steps on stderr, updated by the host between the
segments of a chunk (no host callback inside the compiled loop) and made exact when each chunk
ends."""

from __future__ import annotations

import jax

__all__ = ["Progress"]


class Progress:
    """The bar of one sweep (a context manager; shown only when asked, on process 0).

    ``update(chunk, done)`` moves the bar to `done` run-steps of chunk number `chunk`;
    ``chunk_done`` replaces those by the exact count of the chunk (runs that stopped early
    count their whole budget) once its results are on the host.
    """

    def __init__(self, show: bool, n_runs: int, max_steps: int):
        self.max_steps = max_steps
        self.reported: dict[int, int] = {}  # chunk -> run-steps shown so far
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

    @property
    def shown(self) -> bool:
        """Whether there is a bar to update."""
        return self.bar is not None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, chunk: int, done: int) -> None:
        """Chunk number `chunk` has taken `done` run-steps so far."""
        if self.bar is not None:
            delta = done - self.reported.get(chunk, 0)
            if delta > 0:
                self.reported[chunk] = done
                self.bar.update(delta)

    def chunk_done(self, chunk: int, runs: int, runs_done: int, n_chunks: int) -> None:
        """Chunk number `chunk` (0-based, `runs` runs; `runs_done` runs finished in all) is on
        the host: count it exactly."""
        if self.bar is None:
            return
        self.bar.update(runs * self.max_steps - self.reported.pop(chunk, 0))
        total = self.bar.total // self.max_steps
        self.bar.set_postfix_str(f"runs {runs_done}/{total}, chunk {chunk + 1}/{n_chunks}")
