"""Low-precision lookups: a table far beyond the last-level cache, as float32, as
float16 and bfloat16, and as row-wise quantized 8- and 4-bit tables, for nbbag and
torch in the same run.

The table is V = 20M x D = 64 (``NBBAG_BENCH_QUANT_ROWS`` rows; 200,000 with
``NBBAG_BENCH_QUICK=1``): 5.1 GB as float32, 2.6 GB as float16 or bfloat16, 1.4 GB at
8 bits, 0.8 GB at 4 bits (this machine's L3 is 32 MB).  4096 bags of 1-99 ids, uniform
and Zipf(1.05), mode sum.  Impls: ``nbbag-float32`` (``nbbag.embedding_bag`` on the
float table), ``nbbag-float16`` and ``nbbag-bfloat16`` (on the table rounded to those
dtypes), ``nbbag-int8`` and ``nbbag-int4`` (on ``nbbag.quantize_rows`` of it),
``torch-float32``
(``F.embedding_bag``), ``torch-byte`` and ``torch-4bit`` (torch's
``embedding_bag_byte_rowwise_offsets`` / ``embedding_bag_4bit_rowwise_offsets`` on the
same codes in torch's prepacked layout: identical bytes, tested in
tests/test_quantized.py), ``tbe-int8`` and ``tbe-int4`` (FBGEMM's CPU int-N TBE,
``benchmarks/tbe.py``, holding the same codes with float16 scales and biases; skipped
where fbgemm_gpu cannot be imported).  Each impl's first call is checked outside the
timed region (float32 against nbbag's float forward, the half ones against it on the
half table's values, the quantized ones against the float forward on the dequantized
table).  Group: ``quantized-forward-{dist}``.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

import nbbag
from benchmarks import tbe
from benchmarks.common import NUM_BAGS, QUICK, SEED, bag_ids, bag_offsets, time_case, torch

D = 64
ROWS = 200_000 if QUICK else int(os.environ.get("NBBAG_BENCH_QUANT_ROWS", 20_000_000))
IMPLS = ("nbbag-float32", "nbbag-float16", "nbbag-bfloat16", "nbbag-int8", "nbbag-int4",
         "torch-float32", "torch-byte", "torch-4bit", "tbe-int8", "tbe-int4")  # fmt: skip
HALF = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@pytest.fixture(scope="module")
def tables() -> dict:
    """The float32 table (uniform in [-1, 1), filled in chunks), the table rounded to
    float16 and bfloat16 (allocated as the float32 one: NumPy's alignment, like for
    like), and its 8- and 4-bit quantizations."""
    weight = np.empty((ROWS, D), np.float32)
    rng = np.random.default_rng(SEED)
    for first in range(0, ROWS, 1 << 20):
        chunk = weight[first : first + (1 << 20)]
        rng.random(dtype=np.float32, out=chunk)
        chunk *= 2
        chunk -= 1
    halves = {}
    for name, dtype in HALF.items():
        halves[name] = np.empty((ROWS, D), dtype)
        for first in range(0, ROWS, 1 << 20):
            rows = slice(first, first + (1 << 20))
            halves[name][rows] = weight[rows]
    return {
        "float32": weight,
        **halves,
        "int8": nbbag.quantize_rows(weight, bits=8),
        "int4": nbbag.quantize_rows(weight, bits=4),
    }


def _call(impl: str, tables: dict, ids, offsets):
    """The impl's forward as a no-argument call."""
    library, kind = impl.split("-")
    if library == "nbbag":
        table, starts = tables[kind], offsets[:-1]
        return lambda: nbbag.embedding_bag(table, ids, starts, mode="sum")
    if library == "tbe":
        reason = tbe.unavailable()
        if reason is not None:
            pytest.skip(reason)
        module, starts = tbe.IntNTBE(tables[kind]), offsets[:-1]
        return lambda: module(ids, starts)
    if torch is None:
        pytest.skip("torch is not installed")
    t_ids, t_offsets = torch.from_numpy(ids), torch.from_numpy(offsets[:-1])
    if kind == "float32":
        weight = torch.from_numpy(tables["float32"])
        return lambda: torch.nn.functional.embedding_bag(
            t_ids, weight, t_offsets, mode="sum"
        )
    bits = 8 if kind == "byte" else 4
    packed = torch.from_numpy(tables[f"int{bits}"].to_torch_prepacked())
    op = getattr(
        torch.ops.quantized,
        "embedding_bag_byte_rowwise_offsets"
        if bits == 8
        else "embedding_bag_4bit_rowwise_offsets",
    )
    return lambda: op(packed, t_ids, t_offsets, mode=0)


def _expected(impl: str, tables: dict, ids, offsets) -> np.ndarray:
    kind = impl.split("-")[1]
    table = {"byte": "int8", "4bit": "int4"}.get(kind, kind)
    if table in HALF:  # the float32 forward on the rows' values
        weight = tables[table][ids].astype(np.float32)
    elif table == "float32":
        weight = tables[table]
    else:
        weight = tables[table].dequantize(ids)
    local = ids if table == "float32" else np.arange(ids.shape[0])
    return nbbag.embedding_bag(weight, local, offsets[:-1], mode="sum")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dist", ["uniform", "zipf"])
def test_quantized_forward(benchmark, tables, impl, dist):
    offsets = bag_offsets(NUM_BAGS)
    ids = bag_ids(dist, int(offsets[-1]), ROWS)
    call = _call(impl, tables, ids, offsets)
    out = np.asarray(call())
    # TBE's 8-bit scales and biases are float16: within their rounding (~5e-4 of a
    # row's range a term, ~50 terms a bag)
    atol = 0.05 if impl == "tbe-int8" else 1e-4
    np.testing.assert_allclose(out, _expected(impl, tables, ids, offsets), rtol=1e-4,
                               atol=atol)  # fmt: skip
    benchmark.group = f"quantized-forward-{dist}"
    benchmark.extra_info.update(rows=ROWS, dim=D)
    time_case(benchmark, call)
