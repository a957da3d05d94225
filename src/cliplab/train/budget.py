"""Fit a run's step count to a wall-clock budget (``--time-budget-minutes``), re-planned as it runs.

The first plan comes after a few steps, whose average time includes start-up costs (allocation,
first-touch of buffers, a busy disk). From then on the plan is redone every ``every`` steps from the
steady speed measured since the first plan, so a slow start no longer leaves most of the budget unused
and a machine that slows down later still ends on time. The learning-rate schedule follows the planned
total, so a re-plan moves the cosine's progress by the plan's error, which shrinks as the run goes on.

The budget is the run's, not a session's: a resumed run has what its earlier sessions left.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TimeBudget", "run_budget"]

OVERRUN = 1.15  # past this fraction of the budget, stop whatever the plan says


@dataclass
class TimeBudget:
    seconds: float
    start: int  # the step the run (or resumed run) began at
    cap: int  # the configured number of steps: the budget only ever shortens a run
    probe: int = 20  # steps before the first plan
    every: int = 10  # steps between re-plans
    _mark: tuple[int, float] | None = None  # (step, elapsed) at the first plan

    def plan(self, step: int, elapsed: float, total: int) -> int:
        """The run's total steps after ``step`` steps took ``elapsed`` seconds (``total`` = the current plan)."""
        if step - self.start == self.probe:
            seconds_a_step = elapsed / self.probe
            self._mark = (step, elapsed)
        elif self._mark is not None and (step - self._mark[0]) % self.every == 0:
            seconds_a_step = (elapsed - self._mark[1]) / (step - self._mark[0])
        else:
            seconds_a_step = None
        if seconds_a_step is not None:
            left = max(0.0, self.seconds - elapsed)
            total = min(self.cap, step + int(left / max(seconds_a_step, 1e-9)))
        if elapsed > OVERRUN * self.seconds:
            total = min(total, step)  # slower than any plan foresaw: stop here, keep the budget
        return total


def run_budget(minutes: float, spent: float, start: int, total: int, cap: int,
               saved: dict | None = None) -> tuple[TimeBudget | None, int]:
    """This session's budget, for a run whose earlier sessions trained ``spent`` seconds and stopped at step
    ``start`` of a planned ``total``, and the total to go on with (never beyond the configured ``cap``). A plan
    that is done goes on to ``cap`` only when the cap or the budget grew since ``saved`` (``{"minutes",
    "cap"}`` of the session that made the plan): the same command again trains no more. ``(None, start)``:
    nothing to train."""
    left = 60 * minutes - spent
    total = min(total, cap)
    if total <= start:
        grew = saved is None or cap > saved.get("cap", cap) or minutes > saved.get("minutes", minutes)
        if not grew:
            return None, start
        total = cap
    if left <= 0 or total <= start:
        return None, start
    return TimeBudget(left, start, cap=cap, probe=min(20, max(1, (total - start) // 10))), total
