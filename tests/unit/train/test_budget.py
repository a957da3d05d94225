"""The time budget plans the step count from the measured speed and re-plans as the speed changes."""

import pytest

from cliplab.train.budget import OVERRUN, TimeBudget


def _run(budget: TimeBudget, seconds_at, total: int) -> tuple[int, float]:
    """Simulate a run whose step ``s`` (1-based) takes ``seconds_at(s)``; returns (steps, elapsed)."""
    step, elapsed = budget.start, 0.0
    while step < total:
        step += 1
        elapsed += seconds_at(step)
        total = budget.plan(step, elapsed, total)
    return step, elapsed


def test_a_slow_start_does_not_leave_the_budget_unused():
    # the first 20 steps take 1 s (a busy disk), the rest 0.1 s: a plan from the start alone would stop at
    # step 100 after 28 s of a 100 s budget
    steps, elapsed = _run(TimeBudget(100.0, 0, cap=10**6), lambda s: 1.0 if s <= 20 else 0.1, 10**6)
    assert 0.97 * 100 <= elapsed <= 100.0 + 0.1
    assert 815 <= steps <= 820


def test_a_machine_that_slows_down_still_ends_on_time():
    steps, elapsed = _run(TimeBudget(100.0, 0, cap=10**6), lambda s: 0.1 if s <= 500 else 0.3, 10**6)
    assert 0.97 * 100 <= elapsed <= 100.0 + 10 * 0.3  # at most one re-plan interval late
    assert 500 < steps < 1000


def test_the_budget_only_shortens_the_configured_run():
    steps, elapsed = _run(TimeBudget(100.0, 0, cap=300), lambda s: 0.1, 300)
    assert steps == 300 and elapsed == pytest.approx(30.0)


def test_a_resumed_run_plans_from_its_own_start():
    budget = TimeBudget(10.0, 1000, cap=10**6)
    steps, elapsed = _run(budget, lambda s: 0.1, 10**6)
    assert 1095 <= steps <= 1100 and elapsed <= 10.0 + 1e-9


def test_an_overrun_stops_at_once():
    budget = TimeBudget(100.0, 0, cap=10**6)
    assert budget.plan(20, 10.0, 10**6) == 200  # 0.5 s a step: 180 more steps fit
    assert budget.plan(21, OVERRUN * 100 + 1, 200) == 21


def test_the_budget_is_the_runs_and_a_larger_steps_goes_on_where_the_plan_ended():
    from cliplab.train.budget import run_budget

    budget, total = run_budget(1.0, spent=45.0, start=300, total=400, cap=1000)  # killed at step 300 of 400
    assert total == 400 and budget.seconds == 15.0 and budget.cap == 1000
    budget, total = run_budget(1.0, spent=45.0, start=400, total=400, cap=1000)  # the plan done: --steps 1000
    assert total == 1000 and budget.seconds == 15.0
    assert run_budget(1.0, spent=61.0, start=400, total=400, cap=1000) == (None, 400)  # the budget used up
    same = {"minutes": 1.0, "cap": 1000}  # the plan ended a little under the budget: the same command again
    assert run_budget(1.0, spent=59.0, start=400, total=400, cap=1000, saved=same) == (None, 400)  # trains no more
    assert run_budget(1.0, spent=59.0, start=400, total=400, cap=2000, saved=same)[1] == 2000  # --steps grew
    assert run_budget(2.0, spent=59.0, start=400, total=400, cap=1000, saved=same)[1] == 1000  # the budget grew
    assert run_budget(1.0, spent=30.0, start=300, total=400, cap=350, saved=same)[1] == 350  # a smaller --steps
