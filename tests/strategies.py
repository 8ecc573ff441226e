"""Random bags for property tests, and the tolerances to compare them with."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

MODES = ("sum", "mean", "max", "sqrtn")


@dataclass
class Case:
    """One forward call: the weight and the keyword arguments of embedding_bag."""

    weight: np.ndarray
    indices: np.ndarray
    offsets: np.ndarray | None
    kwargs: dict = field(default_factory=dict)
    longest_bag: int = 0

    def call(self, function, weight=None):
        weight = self.weight if weight is None else weight
        return function(weight, self.indices, self.offsets, **self.kwargs)


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
def cases(draw, modes=MODES, allow_weights=True, allow_max_norm=True):
    """Random bags: empty bags, single bags, a hot row repeated thousands of times,
    padding (sometimes everywhere), 1-D and 2-D indices, both index and float dtypes,
    D = 1 and odd D, every option of the forward."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    num_rows = draw(st.integers(1, 40))
    dim = draw(st.sampled_from([1, 2, 3, 5, 8, 16, 17, 33, 48]))
    float_dtype = draw(st.sampled_from([np.float32, np.float64]))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    mode = draw(st.sampled_from(modes))
    two_d = draw(st.booleans())
    if two_d:
        num_bags = draw(st.integers(0, 6))
        lengths = [draw(st.integers(0, 9))] * num_bags
    else:
        lengths = draw(st.lists(st.integers(0, 12), min_size=0, max_size=8))
        if lengths and draw(st.integers(0, 4)) == 0:  # a hot row, thousands of times
            lengths[draw(st.integers(0, len(lengths) - 1))] = draw(st.integers(1000, 4000))
    num_indices = sum(lengths)
    indices = rng.integers(0, num_rows, size=num_indices)
    hot_bag = max(lengths, default=0) >= 1000
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
