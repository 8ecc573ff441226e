"""Random bags for property tests, fixed bags for every option, and the tolerances to
compare them with."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import nbbag

MODES = tuple(mode.name.lower() for mode in nbbag.Mode)
WEIGHTED_MODES = tuple(mode for mode in MODES if mode != "max")  # max takes no weights
ARRAY_ARGUMENTS = ("per_sample_weights",)  # the keyword arguments that are arrays


@dataclass
class Case:
    """One forward call: the weight and the keyword arguments of embedding_bag."""

    weight: np.ndarray
    indices: np.ndarray
    offsets: np.ndarray | None
    kwargs: dict = field(default_factory=dict)
    longest_bag: int = 0

    def call(self, function, weight=None, to=None):
        """``function(weight, indices, offsets, **kwargs)``; ``to`` (a backend's
        ``array``) moves indices, offsets and per_sample_weights first."""
        weight = self.weight if weight is None else weight
        if to is None:
            return function(weight, self.indices, self.offsets, **self.kwargs)
        kwargs = {
            key: to(value) if key in ARRAY_ARGUMENTS else value
            for key, value in self.kwargs.items()
        }
        return function(weight, to(self.indices), to(self.offsets), **kwargs)


def tolerance(dtype, longest_bag: int) -> float:
    """Relative tolerance for a reduction of ``longest_bag`` terms in ``dtype``.

    float32 sums drift with the number of terms (measured: ~1e-4 over thousands of
    hot-row terms), so the bound grows with the longest bag.
    """
    eps = np.finfo(dtype).eps
    return float(eps * 8 * max(16, longest_bag))


def assert_close(actual, expected, dtype, longest_bag: int) -> None:
    tol = tolerance(dtype, longest_bag)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


@st.composite
def cases(draw, modes=MODES, allow_weights=True, allow_max_norm=True, tiny=False):
    """Random bags: empty bags, single bags, a hot row repeated thousands of times,
    padding (sometimes everywhere), 1-D and 2-D indices, both index and float dtypes,
    D = 1 and odd D, every option of the forward.  ``tiny``: the same kinds of bags,
    fewer and shorter (D <= 8, a hot row repeated tens of times), for the GPU's
    simulator."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    num_rows = draw(st.integers(1, 40))
    dims = [1, 2, 3, 5, 8] if tiny else [1, 2, 3, 5, 8, 16, 17, 33, 48]
    dim = draw(st.sampled_from(dims))
    float_dtype = draw(st.sampled_from([np.float32, np.float64]))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    mode = draw(st.sampled_from(modes))
    two_d = draw(st.booleans())
    if two_d:
        num_bags = draw(st.integers(0, 4 if tiny else 6))
        lengths = [draw(st.integers(0, 5 if tiny else 9))] * num_bags
    else:
        longest, most = (6, 5) if tiny else (12, 8)
        lengths = draw(st.lists(st.integers(0, longest), min_size=0, max_size=most))
        if lengths and draw(st.integers(0, 4)) == 0:  # a hot row, thousands of times
            hot = (20, 60) if tiny else (1000, 4000)
            lengths[draw(st.integers(0, len(lengths) - 1))] = draw(st.integers(*hot))
    num_indices = sum(lengths)
    indices = rng.integers(0, num_rows, size=num_indices)
    hot_bag = max(lengths, default=0) >= (20 if tiny else 1000)
    if hot_bag:
        start = int(np.cumsum([0] + lengths)[int(np.argmax(lengths))])
        indices[start : start + max(lengths)] = rng.integers(0, num_rows)

    kwargs = {"mode": mode}
    padding = draw(st.sampled_from(["none", "some", "everywhere", "negative"]))
    if padding != "none":
        padding_idx = int(rng.integers(0, num_rows))
        if padding == "everywhere":
            indices[:] = padding_idx
        elif padding == "some":
            indices[rng.random(num_indices) < 0.3] = padding_idx
        kwargs["padding_idx"] = (
            padding_idx - num_rows if padding == "negative" else padding_idx
        )

    weight = rng.standard_normal((num_rows, dim)).astype(float_dtype)
    if allow_weights and mode != "max" and draw(st.booleans()):
        kwargs["per_sample_weights"] = rng.uniform(0.1, 2.0, num_indices).astype(
            float_dtype
        )
    if allow_max_norm and draw(st.integers(0, 3)) == 0:
        kwargs["max_norm"] = float(rng.uniform(0.5, 3.0))
        kwargs["norm_type"] = draw(st.sampled_from([1.0, 2.0, 3.0, np.inf]))

    if two_d:
        indices = indices.reshape(len(lengths), lengths[0] if lengths else 0)
        if "per_sample_weights" in kwargs:
            kwargs["per_sample_weights"] = kwargs["per_sample_weights"].reshape(
                indices.shape
            )
        offsets = None
    else:
        offsets = np.cumsum([0] + lengths)[:-1]
        if draw(st.booleans()):
            kwargs["include_last_offset"] = True
            offsets = np.cumsum([0] + lengths)
        offsets = offsets.astype(index_dtype)
    return Case(
        weight, indices.astype(index_dtype), offsets, kwargs, max(lengths, default=0)
    )


# Fixed bags: every mode and option, deterministically (a few hypothesis examples on
# the GPU cannot promise to draw each).

FIXED_PADDING = 2  # row 2: bag 2 holds only it


def fixed_bags(rng, *, dtype=np.float32, index_dtype=np.int64, num_rows=9, dim=5):
    """(weight, indices, offsets, per_sample_weights): five bags, bag 1 empty, bag 3
    holding only row FIXED_PADDING (twice), row 4 in three bags; D = 5 (odd: a
    partial thread group on the GPU)."""
    weight = rng.standard_normal((num_rows, dim)).astype(dtype)
    indices = np.array([1, 2, 4, 4, 2, 2, 7, 0, 8, 4, 3], dtype=index_dtype)
    offsets = np.array([0, 3, 3, 4, 6], dtype=index_dtype)
    weights = rng.uniform(0.5, 2.0, indices.shape[0]).astype(dtype)
    return weight, indices, offsets, weights


def fixed_cases(rng) -> dict[str, Case]:
    """Cases of ``fixed_bags`` for the backward, by name: every mode with and without
    padding, weighted (every mode but max), scale_grad_by_freq, 2-D indices and
    include_last_offset."""
    weight, indices, offsets, weights = fixed_bags(rng)
    found = {}
    for mode in MODES:
        found[mode] = Case(weight, indices, offsets, {"mode": mode})
        found[f"{mode}-padding"] = Case(
            weight, indices, offsets, {"mode": mode, "padding_idx": FIXED_PADDING}
        )
        if mode in WEIGHTED_MODES:
            found[f"{mode}-weighted"] = Case(
                weight, indices, offsets, {"mode": mode, "per_sample_weights": weights}
            )
    found["mean-freq"] = Case(
        weight, indices, offsets, {"mode": "mean", "scale_grad_by_freq": True}
    )
    found["sum-2d"] = Case(weight, indices[:10].reshape(2, 5), None, {"mode": "sum"})
    found["sum-last-offset"] = Case(
        weight, indices, offsets[:3], {"mode": "sum", "include_last_offset": True}
    )
    for case in found.values():
        case.longest_bag = indices.shape[0]
    return found


FIXED_CASES = tuple(fixed_cases(np.random.default_rng(0)))  # their names


# Fixed comparisons: the tolerance of a few terms in each float dtype.

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_matches(actual, expected, dtype=np.float32) -> None:
    """``actual`` equals ``expected`` to a few terms' rounding in ``dtype``."""
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


# Bad forward input: (changes to a good call, the exception, the CPU's message).  With
# max_norm in the good call, a kernel that ran would write to the table.
BAD_FORWARD_INPUTS = {
    "index-past-V": (
        {"indices": [0, 9], "offsets": [0, 1]},
        IndexError,
        r"indices\[1\] = 9 is outside \[0, 9\)",
    ),
    "negative-index": (
        {"indices": [0, -1], "offsets": [0, 1]},
        IndexError,
        r"indices\[1\] = -1 is outside",
    ),
    "first-offset": ({"offsets": [1, 2]}, ValueError, r"offsets\[0\] must be 0, got 1"),
    "decreasing-offsets": (
        {"offsets": [0, 2, 1]},
        ValueError,
        r"offsets\[1\] = 2 > offsets\[2\] = 1",
    ),
    "offset-past-end": (
        {"offsets": [0, 12]},
        ValueError,
        r"offsets\[1\] = 12 is past the end",
    ),
    "float-indices": (
        {"indices": np.array([0.0, 1.0]), "offsets": [0]},
        TypeError,
        "indices must be int32 or int64",
    ),
    "weighted-max": (
        {"mode": "max", "per_sample_weights": np.ones(11, np.float32)},
        ValueError,
        "max",
    ),
}


def bad_forward_call(rng, change: dict) -> tuple[np.ndarray, dict]:
    """(host weight, keyword arguments of embedding_bag) for a BAD_FORWARD_INPUTS case:
    ``fixed_bags`` with max_norm, and ``change``."""
    weight, indices, offsets, _ = fixed_bags(rng)
    kwargs = {"indices": indices, "offsets": offsets, "mode": "sum", "max_norm": 0.1}
    kwargs.update(change)
    return weight, kwargs
