"""The hyperparameters of every step since a point, kept so that a row skipped for k
steps of any schedule is caught up in O(log k).

A gradient-free SGD step is linear in a weight element w and its momentum u:
``(w, u) <- M (w, u)`` with a 2x2 matrix M (:func:`nbbag.rules.sgd_step_matrix`), so k
skipped steps are the product of k matrices.  Consecutive steps with the same
hyperparameters form a *run*; a log keeps, for each run, its first step and its one-step
matrix, and for the runs already closed a table of products over aligned blocks of
runs (block i of level l: runs [i 2^l, (i + 1) 2^l), a sparse table).  The product over
any span of steps is then a power of the first run's matrix, O(log) block products
for the closed runs in between, and a power of the last run's (:func:`span`): a
constant learning rate is one run, a per-step schedule one run per step.

The log holds at most ``capacity`` runs; the optimizer brings every row up to date
(a flush) before a new run would not fit, and starts the log afresh.

Matrices are 4-tuples (a, b, c, d) for [[a, b], [c, d]], in float64.  The functions
marked ``shared`` run in the CPU and the GPU kernels alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from nbbag.base.shared import shared


class Schedule(NamedTuple):
    """A log's arrays, as the kernels read them (device arrays on the GPU).  A step
    record that carries a log has these fields too (Numba's parallel loops take a
    record's arrays only as its own fields, not in a nested record)."""

    starts: Any  # (capacity,) int64: the first step of each run
    matrices: Any  # (capacity, 4) float64: one step's matrix of each run
    products: Any  # (2 capacity, 4) float64: the closed runs' block products
    runs: int  # the runs in the log; the last one is open (still growing)


@shared
def multiply(x, y):
    """The matrix product x y."""
    return (
        x[0] * y[0] + x[1] * y[2],
        x[0] * y[1] + x[1] * y[3],
        x[2] * y[0] + x[3] * y[2],
        x[2] * y[1] + x[3] * y[3],
    )


@shared
def power(matrix, n):
    """``matrix`` to the power ``n`` >= 0, by squaring: O(log n) products."""
    result = (1.0, 0.0, 0.0, 1.0)
    square = (float(matrix[0]), float(matrix[1]), float(matrix[2]), float(matrix[3]))
    while n > 0:
        if n & 1:
            result = multiply(result, square)
        square = multiply(square, square)
        n >>= 1
    return result


@shared
def level_offset(capacity, level):
    """Where level ``level``'s blocks start in ``products`` (level l has capacity >> l
    blocks)."""
    return 2 * capacity - ((2 * capacity) >> level)


@shared
def row_of(table, index):
    """Row ``index`` of a (n, 4) table, as a matrix."""
    return (table[index, 0], table[index, 1], table[index, 2], table[index, 3])


@shared
def run_containing(starts, count, step):
    """The run that step ``step`` belongs to (binary search; step >= starts[0])."""
    low, high = 0, count - 1
    while low < high:
        middle = (low + high + 1) >> 1
        if starts[middle] <= step:
            low = middle
        else:
            high = middle - 1
    return low


@shared
def closed_runs(products, first, stop):
    """The product of the closed runs [first, stop), the later ones on the left: the
    largest aligned block that starts at each point, O(log) blocks."""
    capacity = products.shape[0] >> 1
    result = (1.0, 0.0, 0.0, 1.0)
    run = first
    while run < stop:
        level = 0
        while run % (2 << level) == 0 and run + (2 << level) <= stop:
            level += 1
        block = row_of(products, level_offset(capacity, level) + (run >> level))
        result = multiply(block, result)
        run += 1 << level
    return result


@shared
def span(schedule, first, last):
    """The product of the step matrices of steps ``first`` .. ``last`` (inclusive),
    the later steps on the left: what those steps do to a row with no gradient.
    ``schedule``: a :class:`Schedule`, or a step record with its fields."""
    if first > last:
        return (1.0, 0.0, 0.0, 1.0)
    starts, matrices = schedule.starts, schedule.matrices
    head = run_containing(starts, schedule.runs, first)
    tail = run_containing(starts, schedule.runs, last)
    if head == tail:
        return power(row_of(matrices, head), last - first + 1)
    result = power(row_of(matrices, head), starts[head + 1] - first)
    result = multiply(closed_runs(schedule.products, head + 1, tail), result)
    return multiply(power(row_of(matrices, tail), last - starts[tail] + 1), result)


class ScheduleLog:
    """The host's log of runs (NumPy arrays; a GPU optimizer copies the entries that
    change, see ``changed``).

    Parameters
    ----------
    capacity : int
        The most runs kept (a power of two); memory 80 bytes a run
        (``capacity`` x 80 bytes: 1.3 MB at the default).
    step_matrix, moves_rows : callables of the hyperparameters (a dict by name)
        The rule's (:class:`nbbag.rules.Rule`): one step's matrix, and whether a step
        changes rows that have no gradient.
    """

    def __init__(
        self,
        capacity: int,
        step_matrix: Callable[[dict], tuple],
        moves_rows: Callable[[dict], bool],
    ):
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity}")
        self.starts = np.zeros(capacity, dtype=np.int64)
        self.matrices = np.zeros((capacity, 4), dtype=np.float64)
        self.products = np.zeros((2 * capacity, 4), dtype=np.float64)
        self.step_matrix, self.moves_rows = step_matrix, moves_rows
        self.count = 0
        self.moves = False  # whether some run changes a row that has no gradient
        self.changed: list[tuple[str, int]] = []  # (array, index) since last taken

    @property
    def capacity(self) -> int:
        return self.starts.shape[0]

    def schedule(self) -> Schedule:
        return Schedule(self.starts, self.matrices, self.products, self.count)

    def opens_run(self, values: dict) -> bool:
        """Whether a step with the hyperparameters ``values`` opens a new run."""
        return self._opens_run(self.step_matrix(values))

    def _opens_run(self, matrix: tuple) -> bool:
        return self.count == 0 or tuple(self.matrices[self.count - 1]) != matrix

    @property
    def full(self) -> bool:
        return self.count == self.capacity

    def append(self, step: int, values: dict) -> None:
        """Step ``step`` (the one after the last logged; or the first of the steps
        since the log started, all taken with ``values``) takes ``values``."""
        matrix = self.step_matrix(values)
        if not self._opens_run(matrix):
            return
        if self.count:
            self._close(self.count - 1, step - int(self.starts[self.count - 1]))
        run = self.count
        self.starts[run] = step
        self.matrices[run] = matrix
        self.changed += [("starts", run), ("matrices", run)]
        self.count += 1
        self.moves = self.moves or self.moves_rows(values)

    def _close(self, run: int, steps: int) -> None:
        """Run ``run`` ended after ``steps`` steps: its power, and every block it
        completes, into the products."""
        capacity = self.capacity
        self.products[run] = power.py_func(tuple(self.matrices[run]), steps)
        self.changed.append(("products", run))
        level = 1
        while (run + 1) % (1 << level) == 0 and level <= capacity.bit_length() - 1:
            block = run >> level
            below = level_offset(capacity, level - 1)
            later = tuple(self.products[below + 2 * block + 1])
            earlier = tuple(self.products[below + 2 * block])
            index = level_offset(capacity, level) + block
            self.products[index] = multiply.py_func(later, earlier)
            self.changed.append(("products", index))
            level += 1

    def restart(self) -> None:
        """Every row is up to date: forget the runs."""
        self.count = 0
        self.moves = False
        self.changed.clear()

    def take_changes(self) -> list[tuple[str, int]]:
        changes, self.changed = self.changed, []
        return changes
