"""The backends every test body runs on: the CPU, and the GPU's kernels (under Numba's
CUDA simulator where there is no GPU; ``tests/conftest.py`` chooses).

A test takes the ``backend`` fixture (``tests/conftest.py``) and writes its body once:
``backend.array(x)`` puts an input on the backend, ``backend.host(x)`` brings an output
back as a NumPy array (checking that it is the backend's kind of array), and
``backend.pick(cpu=..., cuda=...)`` sizes the work: the simulator runs each GPU thread
as a Python thread (~100 us each), so the GPU's cases are tiny.  ``on_backends``
parametrises a test over the backend and its own arguments when the GPU should run
only a subset of the CPU's combinations (``covering`` picks one).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings

NAMES = ("cpu", "cuda")
CUDA = pytest.mark.cuda  # `pytest -m cuda` runs the GPU's cases alone
CUDA_EXAMPLES = 15  # hypothesis examples per property on the GPU (the CPU: the profile's)


@dataclass(frozen=True)
class Backend:
    """One backend, as a test sees it."""

    name: str
    node_id: str = ""  # the test's, so that each keeps its own hypothesis examples

    @property
    def tiny(self) -> bool:
        """Whether cases must be tiny (the GPU's kernels, simulated or not)."""
        return self.name == "cuda"

    def pick(self, cpu, cuda):
        """``cpu`` on the CPU, ``cuda`` on the GPU: a size, a count of steps."""
        return cuda if self.tiny else cpu

    def array(self, x):
        """``x`` on this backend: itself on the CPU, a device copy on the GPU (None
        stays None)."""
        if x is None or self.name == "cpu":
            return x
        from nbbag.cuda import arrays

        return arrays.to_device(x)  # (bfloat16 too: numba-cuda's own copy has none)

    def host(self, x) -> np.ndarray:
        """The backend's array ``x`` as a NumPy array: itself on the CPU, a host copy
        on the GPU.  Fails if ``x`` is not the backend's kind of array (a GPU call must
        return device arrays)."""
        if self.name == "cpu":
            assert isinstance(x, np.ndarray), f"expected a NumPy array, got {type(x)}"
            return x
        from numba import cuda

        from nbbag.cuda import arrays

        assert cuda.devicearray.is_cuda_ndarray(x), f"expected a device array: {type(x)}"
        return arrays.to_host(x)

    def copy(self, x):
        """A new array of this backend holding what ``x`` holds."""
        return self.array(self.host(x).copy())

    def examples(
        self,
        strategy,
        check: Callable,
        cuda_examples: int = CUDA_EXAMPLES,
        cpu_examples: int | None = None,
    ):
        """Run ``check(example)`` on examples of ``strategy``: ``cpu_examples`` (default:
        as many as the hypothesis profile says) on the CPU, ``cuda_examples`` on the
        GPU."""

        @given(strategy)
        def run(example):
            check(example)

        count = cuda_examples if self.tiny else cpu_examples
        if count is not None:
            run = settings(max_examples=count)(run)
        # The test's id keys the example database (each test and backend its own).
        run.hypothesis.inner_test._hypothesis_internal_add_digest = self.node_id.encode()
        run()


def backend_param(name: str, *values, id: str | None = None):
    """One row of a parametrisation whose first argument is the backend's name."""
    marks = [CUDA] if name == "cuda" else []
    return pytest.param(
        name, *values, marks=marks, id=None if id is None else f"{name}-{id}"
    )


def on_backends(
    argnames: str,
    values: Sequence,
    cuda: Sequence | None = None,
    ids: Callable | None = None,
):
    """``pytest.mark.parametrize`` over ``backend`` and ``argnames``: every one of
    ``values`` on the CPU, ``cuda`` (default: all of them too) on the GPU; ``ids``
    names a value (default: pytest's names)."""
    names = [name.strip() for name in argnames.split(",")]

    def row(backend: str, value):
        value = tuple(value) if len(names) > 1 else (value,)
        return backend_param(backend, *value, id=None if ids is None else ids(value))

    rows = [row("cpu", v) for v in values]
    rows += [row("cuda", v) for v in (values if cuda is None else cuda)]
    return pytest.mark.parametrize(["backend", *names], rows, indirect=["backend"])


def covering(combinations: Sequence[tuple], strength: int = 1) -> list[tuple]:
    """A subset of ``combinations`` in which every value of every position (strength
    1), or every pair of values that occurs together in some combination (strength
    2), occurs at least once; greedy, so small, and always the same."""
    combinations = [tuple(c) for c in combinations]

    def features(combination):
        return set(itertools.combinations(enumerate(map(repr, combination)), strength))

    needed = set().union(*map(features, combinations))
    chosen = []
    while needed:
        best = max(combinations, key=lambda c: len(features(c) & needed))
        chosen.append(best)
        needed -= features(best)
    return chosen


def product(*axes) -> list[tuple]:
    """Every combination of the values of ``axes``, as a list."""
    return list(itertools.product(*axes))
