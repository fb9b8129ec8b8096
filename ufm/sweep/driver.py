"""The host side of a chunk: its inputs placed on the devices, its start (or its state resumed
from a checkpoint), its steps in segments timed by the host (progress and checkpoints between
segments, never a host callback inside the compiled loop), and its final values.

Without a bar or a checkpoint a chunk is one `advance` call. Otherwise the first segment takes a
few steps and the next ones are sized from the measured rate to last about `_PROGRESS_SECONDS`
(with a bar) or a quarter of ``checkpoint_every`` (with a checkpoint), whichever is shorter; the
state is written whenever the next segment would end more than ``checkpoint_every`` seconds
after the last write. Every segment runs the same executable, so the results do not depend on
where the segments end: a resumed chunk ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from ufm.sweep.checkpoint import Checkpoint
from ufm.sweep.kernel import Config, compiled_advance, compiled_start, finished, prepare
from ufm.sweep.layout import Layout, to_global, to_host
from ufm.sweep.plan import Plan
from ufm.sweep.progress import Progress

__all__ = ["ChunkRun", "Clock"]

_PROGRESS_SECONDS = 0.5  # target length of a segment when a bar is shown
_FIRST_SEGMENT = 8  # steps of a chunk's first segment (its rate is unknown before)
_GROWTH = 4  # a segment is at most this many times longer than the one before


class Clock:
    """When the checkpoint was last written (shared by the chunks of one sweep)."""

    def __init__(self, every: float):
        self.every = every
        self.saved = time.perf_counter()


def _agree(values: list[int]) -> list[int]:
    """Process 0's values on every process (host-timed decisions must be the same everywhere:
    the transfers they trigger are collective)."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(np.asarray(values, np.int64))
    return [int(v) for v in np.asarray(out)]


class ChunkRun:
    """Runs start..stop (chunk number k) of a sweep: `begin` dispatches the start and the first
    segment, `complete` steps to the budget and dispatches the final values (returned as
    device arrays, collected by the caller)."""

    def __init__(self, plan: Plan, layout: Layout, cfg: Config, k: int, span: tuple[int, int],
                 ckpt: Checkpoint | None, bar: Progress, progress: bool, clock: Clock):  # fmt: skip
        self.plan, self.layout, self.cfg, self.k = plan, layout, cfg, k
        self.start, self.stop = span
        self.ckpt, self.bar, self.clock = ckpt, bar, clock
        self.segmented = progress or ckpt is not None
        target = [_PROGRESS_SECONDS] if progress else []
        if ckpt is not None:
            target.append(clock.every / 4)
        self.target = min(target, default=math.inf)
        self.memory = None  # bytes per device and call of `advance`, when measured
        self.resumed_steps = 0

    def _inputs(self):
        """Per-run inputs of the chunk's padded call (padding: copies of its last run) and the
        replicated scalars."""
        plan, layout = self.plan, self.layout
        idx = np.minimum(np.arange(self.start, self.start + layout.padded), self.stop - 1)
        runs, replicated = layout.runs, layout.replicated
        self.args = (
            [to_global(x[idx], runs) for x in plan.leaves],
            {n: to_global(plan.hparams[n][idx], runs) for n in self.cfg.hparam_names},
        )
        self.seeds = to_global(plan.run_seeds[idx].astype(np.int32), runs)
        scalar = lambda v, t: to_global(np.asarray(v, t), replicated)  # noqa: E731
        self.tol = ()
        if self.cfg.use_tol:
            self.tol = (scalar(plan.tol, jax.numpy.result_type(float)),)
        self.budget = scalar(plan.max_steps, np.int32)
        self.every = scalar(plan.record_every or plan.max_steps, np.int32)
        self.scalar = scalar

    def _resume(self):
        """The carry saved in the checkpoint (padded again), or None."""
        template = jax.eval_shape(compiled_start(self.cfg), *self.args, self.seeds, *self.tol)
        leaves, treedef = jax.tree_util.tree_flatten(template)
        like = [(x.shape[1:], np.dtype(x.dtype)) for x in leaves]
        saved = self.ckpt.load_state(self.k, self.start, self.stop, like)
        if saved is None:
            return None
        pos, values = saved
        idx = np.minimum(np.arange(self.layout.padded), self.stop - self.start - 1)
        carry = [to_global(v[idx], self.layout.runs) for v in values]
        self.resumed_steps = pos
        return pos, jax.tree_util.tree_unflatten(treedef, carry)

    def begin(self) -> None:
        """Start the chunk (or resume its saved state) and dispatch its first segment."""
        self._inputs()
        scalars = (self.budget, self.budget, self.every)
        self.memory = prepare(self.cfg, self.args, self.seeds, scalars, self.tol, self.layout.runs)
        resumed = self._resume() if self.ckpt is not None else None
        if resumed is None:
            self.pos, self.carry = 0, compiled_start(self.cfg)(*self.args, self.seeds, *self.tol)
        else:
            self.pos, self.carry = resumed
        self._dispatch(_FIRST_SEGMENT if self.segmented else self.plan.max_steps)

    def _advance_args(self, pos: int):
        stop = self.scalar(pos, np.int32)
        return (*self.args, self.carry, stop, self.budget, self.every, *self.tol)

    def _dispatch(self, n: int) -> None:
        self.n = n
        self.pos = min(self.pos + n, self.plan.max_steps)
        self.carry = compiled_advance(self.cfg)(*self._advance_args(self.pos))
        self.dispatched = time.perf_counter()

    def complete(self):
        """Step to the budget (segment by segment when segmented); returns the final values
        (device arrays, dispatched)."""
        while self.segmented:
            done = self._steps_done()  # waits for the segment
            now = time.perf_counter()
            self.bar.update(self.k, done)
            if self.pos >= self.plan.max_steps:
                break
            seconds = max(now - self.dispatched, 1e-6)
            n = int(min(_GROWTH * self.n, max(1, self.n * self.target / seconds)))
            late = now - self.clock.saved + self.target >= self.clock.every
            n, save = _agree([n, int(self.ckpt is not None and late)])
            if save:
                self._save_state()
            self._dispatch(n)
        return finished(self.cfg, self.seeds)(*self.args, self.carry, *self.tol)

    def _steps_done(self) -> int:
        steps = to_host(self.carry["state"].steps)[: self.stop - self.start]
        return int(np.sum(steps, dtype=np.int64))

    def _save_state(self) -> None:
        leaves = jax.tree.leaves(to_host(self.carry))
        n = self.stop - self.start  # copies: the next segment takes the carry's memory
        self.ckpt.save_state(
            self.k, self.start, self.stop, self.pos, [x[:n].copy() for x in leaves]
        )
        self.clock.saved = time.perf_counter()
