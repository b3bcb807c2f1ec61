"""Running one backend of a check: every batch size through one runner, its outputs and times kept.

Running is apart from measuring and judging (:mod:`.judge`), as Polygraphy's runners are apart from its
comparator: :func:`run_backend` returns a :class:`BackendRun` -- the outputs and median time per batch, or
why the backend did not run (:data:`~.report.NOT_RUN`) or load (:data:`~.report.FAIL`). A backend is run
once per batch size, and again for a median time only while its runs take less than
:data:`REPEAT_BUDGET_S` together: a 1024 px generator's verification costs one run per backend and batch,
not three.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from .._util import exception_line
from .._util.progress import step
from .plan import Plan
from .report import FAIL, NOT_RUN
from .runners import Runner, RunnerUnavailable

__all__ = ["REPEAT_BUDGET_S", "BackendRun", "BatchRun", "run_backend", "timed"]

#: Seconds of runs after which a backend's batch is not run again just for its time: a 1024 px generator
#: at batch 3 runs for many seconds, and the check needs its outputs once, not a median of three.
REPEAT_BUDGET_S = 1.0


def timed(runner: Runner, inputs: tuple, repeats: int) -> tuple[list[np.ndarray], float]:
    """Outputs of the first run and the median wall time of up to ``repeats`` runs, in milliseconds:
    further runs only while the runs so far took less than :data:`REPEAT_BUDGET_S` together."""
    times: list[float] = []
    outputs = None
    while not times or (len(times) < repeats and sum(times) < REPEAT_BUDGET_S * 1e3):
        start = time.perf_counter()
        result = runner.infer(inputs)
        times.append((time.perf_counter() - start) * 1e3)
        if outputs is None:
            outputs = result
        del result
    assert outputs is not None
    return outputs, statistics.median(times)


@dataclass
class BatchRun:
    """One batch size through one backend: its outputs and median time, or why inference failed."""

    outputs: list[np.ndarray] | None = None
    time_ms: float | None = None
    error: str = ""


@dataclass
class BackendRun:
    """What one backend produced. ``status`` is ``""`` when it ran (then ``batches`` holds every batch
    size), else :data:`~.report.NOT_RUN` or :data:`~.report.FAIL` with the ``reason``; ``providers`` are
    those the runner really used."""

    name: str
    status: str = ""
    reason: str = ""
    providers: list[str] = field(default_factory=list)
    batches: dict[int, BatchRun] = field(default_factory=dict)


def run_backend(plan: Plan, inputs: dict[int, tuple], repeats: int) -> BackendRun:
    """Prepare ``plan``'s runner, run it on each batch's inputs (``repeats`` at most, see :func:`timed`)
    and release it; a runner that cannot start here is "not run", one that fails to load a failure."""
    if plan.make is None:
        return BackendRun(plan.name, NOT_RUN, plan.reason)
    runner = None
    try:
        step(f"verify: preparing {plan.name}")
        runner = plan.make()
        runner.prepare()
    except RunnerUnavailable as exc:
        return BackendRun(plan.name, NOT_RUN, str(exc))
    except Exception as exc:
        return BackendRun(plan.name, FAIL, f"could not load: {exception_line(exc)}")
    run = BackendRun(plan.name)
    try:
        for batch, batch_inputs in inputs.items():
            step(f"verify: {plan.name} at batch {batch}")
            try:
                outputs, ms = timed(runner, batch_inputs, repeats)
            except Exception as exc:
                run.batches[batch] = BatchRun(error=f"inference failed: {exception_line(exc)}")
                continue
            run.batches[batch] = BatchRun(outputs, ms)
        run.providers = runner.providers
        return run
    finally:
        runner.release()
