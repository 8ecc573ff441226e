"""FBGEMM's CPU table-batched embeddings (TBE) as a benchmark peer.

FBGEMM's ``SplitTableBatchedEmbeddingBagsCodegen`` (the kernels under TorchRec's
EmbeddingBagCollection) holds many tables in one buffer and looks all their features
up in one call; its optimizer is fused into the backward (``out.backward(grad)``
updates the tables).  Here: tables in host memory (``EmbeddingLocation.HOST``),
computed on the CPU (``ComputeDevice.CPU``), float32 weights and output, pooling SUM
or MEAN, optimizers EXACT_SGD, EXACT_ADAGRAD and EXACT_ROWWISE_ADAGRAD.

TBE's batch is feature-major: ``indices`` holds every feature's ids (each in its own
table's range) one feature after another, and ``offsets`` (T * B + 1 entries) has
feature t's bag b at ``offsets[t * B + b] : offsets[t * B + b + 1]``.  Its output is
(B, sum of D), the features' columns in order, as nbbag's collection.

``fbgemm_gpu`` is optional and imported on first use: where it cannot be imported,
:func:`unavailable` says why and how to install it (``SKIP_REASON``).  The wheel
declares a torch it was built against; installed ``--no-deps`` beside the torch the
benchmarks use, pip keeps that torch.

``python -m benchmarks.tbe`` runs :func:`check` (TBE against NumPy on a small batch).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np

INSTALL = "pip install --no-deps fbgemm-gpu-cpu==1.8.0"
SKIP_REASON = (
    f"fbgemm_gpu cannot be imported: the TBE cases are skipped (install it with "
    f"`{INSTALL}` beside torch==2.13.0; fbgemm-gpu-cpu 1.9.0 does not load with "
    f"torch 2.13.0)"
)
OPTIMIZERS = {
    "sgd": "EXACT_SGD",
    "adagrad": "EXACT_ADAGRAD",
    "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD",
}
POOLING = {"sum": "SUM", "mean": "MEAN"}


@functools.cache
def fbgemm() -> SimpleNamespace:
    """torch and the TBE classes and enums; ImportError (with ``SKIP_REASON``) where
    fbgemm_gpu cannot be imported or its libraries do not load with this torch."""
    try:
        import torch

        with warnings.catch_warnings():
            # the CPU wheel lacks the SSD lookup ops, and says so on import
            warnings.filterwarnings("ignore", r"(?s).*Failed to import", DeprecationWarning)
            from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
            from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
                EmbeddingLocation,
                PoolingMode,
            )
            from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
                ComputeDevice,
                SplitTableBatchedEmbeddingBagsCodegen,
            )
    except (ImportError, OSError, RuntimeError) as error:
        # OSError, RuntimeError: a wheel built for another torch fails to load its ops
        raise ImportError(f"{SKIP_REASON}: {type(error).__name__}: {error}") from error
    return SimpleNamespace(
        torch=torch,
        TBE=SplitTableBatchedEmbeddingBagsCodegen,
        ComputeDevice=ComputeDevice,
        EmbeddingLocation=EmbeddingLocation,
        EmbOptimType=EmbOptimType,
        PoolingMode=PoolingMode,
        SparseType=SparseType,
    )


def unavailable() -> str | None:
    """Why TBE cannot run here (a sentence naming the install command), or None."""
    try:
        fbgemm()
    except ImportError as error:
        return str(error)
    return None


def pack(ids: Sequence[np.ndarray], starts: Sequence[np.ndarray]):
    """TBE's ``(indices, offsets)`` (int64 NumPy) for T features of B bags each.

    Parameters
    ----------
    ids : sequence of T int64 arrays
        Each feature's ids, in its own table's range.
    starts : sequence of T int64 arrays (B,)
        Each feature's bag starts into its ids (torch's B form of offsets).
    """
    num_bags = {s.shape[0] for s in starts}
    if len(num_bags) != 1:
        raise ValueError(f"every feature needs the same number of bags, got {num_bags}")
    indices = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids])
    bases = np.cumsum([0] + [x.shape[0] for x in ids])
    offsets = np.concatenate(
        [
            np.asarray(s, dtype=np.int64) + base
            for s, base in zip(starts, bases[:-1], strict=True)
        ]
        + [np.array([bases[-1]], dtype=np.int64)]
    )
    return indices, offsets


class TBE:
    """One TBE module over its own copy of ``tables``.

    Parameters
    ----------
    tables : sequence of float32 arrays (V_t, D_t)
        The initial tables (copied in: every impl of a benchmark starts from them).
        D_t must be a multiple of 4 (TBE's rule).
    opt : {"sgd", "adagrad", "rowwise_adagrad"}, default "sgd"
        The optimizer fused into the backward (a forward alone never applies it).
    lr, eps : float
        The learning rate; Adagrad's eps, added to sqrt(state) as nbbag and torch add
        it (TBE's default, 1e-8, is not torch's 1e-10: given here).
    mode : {"sum", "mean"}
    """

    def __init__(
        self,
        tables: Sequence[np.ndarray],
        opt: str = "sgd",
        lr: float = 0.01,
        eps: float = 1e-10,
        mode: str = "sum",
    ):
        lib = fbgemm()
        self.torch = lib.torch
        host, cpu = lib.EmbeddingLocation.HOST, lib.ComputeDevice.CPU
        specs = [(t.shape[0], t.shape[1], host, cpu) for t in tables]
        self.module = lib.TBE(
            specs,
            optimizer=getattr(lib.EmbOptimType, OPTIMIZERS[opt]),
            learning_rate=lr,
            eps=eps,
            pooling_mode=getattr(lib.PoolingMode, POOLING[mode]),
            weights_precision=lib.SparseType.FP32,
            output_dtype=lib.SparseType.FP32,
            device="cpu",
        )
        for split, table in zip(self.module.split_embedding_weights(), tables, strict=True):
            split.copy_(self.torch.from_numpy(np.ascontiguousarray(table, np.float32)))

    @property
    def weights(self) -> list[np.ndarray]:
        """Each table's rows: NumPy views of TBE's buffer."""
        return [split.numpy() for split in self.module.split_embedding_weights()]

    def inputs(self, ids: Sequence[np.ndarray], starts: Sequence[np.ndarray]):
        """The batch as TBE's ``(indices, offsets)`` tensors (see :func:`pack`)."""
        indices, offsets = pack(ids, starts)
        return self.torch.from_numpy(indices), self.torch.from_numpy(offsets)

    def forward(self, indices, offsets, per_sample_weights=None):
        """The (B, sum of D) output, without autograd (TBE's CPU ops have no
        inference-mode kernel: ``no_grad`` it is)."""
        with self.torch.no_grad():
            return self.module(indices, offsets, per_sample_weights)

    def step(self, indices, offsets, grad_output):
        """A training step: the forward, then its backward, which applies the
        optimizer to the rows the batch read."""
        out = self.module(indices, offsets)
        out.backward(grad_output)
        return out


# -- the correctness check --------------------------------------------------------------
def reference_forward(tables, ids, starts, mode: str) -> np.ndarray:
    """NumPy's (B, sum of D): each feature's bags reduced, in float64."""
    columns = []
    for table, x, s in zip(tables, ids, starts, strict=True):
        stops = np.append(s[1:], x.shape[0])
        out = np.zeros((s.shape[0], table.shape[1]))
        for b, (lo, hi) in enumerate(zip(s, stops, strict=True)):
            if hi > lo:
                rows = table[x[lo:hi]].astype(np.float64)
                out[b] = rows.sum(axis=0) / (hi - lo if mode == "mean" else 1)
        columns.append(out)
    return np.concatenate(columns, axis=1)


def reference_sgd(tables, ids, starts, grad_output, lr: float, mode: str):
    """Each table after one SGD step in float64: row r -= lr * the sum of its tokens'
    gradient rows (a token's bag's grad_output columns, over the bag's length for
    mean)."""
    stepped, column = [], 0
    for table, x, s in zip(tables, ids, starts, strict=True):
        dim = table.shape[1]
        lengths = np.diff(np.append(s, x.shape[0]))
        bag_of_token = np.repeat(np.arange(s.shape[0]), lengths)
        token_grads = grad_output[bag_of_token, column : column + dim].astype(np.float64)
        if mode == "mean":
            token_grads /= lengths[bag_of_token][:, None]
        grad = np.zeros(table.shape)
        np.add.at(grad, x, token_grads)
        stepped.append(table - lr * grad)
        column += dim
    return stepped


def check(
    rows: Sequence[int] = (50, 7, 1000),
    dims: Sequence[int] = (8, 8, 16),
    num_bags: int = 16,
    lr: float = 0.5,
    seed: int = 0,
) -> None:
    """TBE against NumPy on a small batch (bags of 0 to 5 ids): the forward (sum and
    mean), and one EXACT_SGD step from the same tables (sum and mean), whose touched
    rows must move as NumPy's SGD moves them and whose other rows must not change.
    AssertionError on a mismatch, ImportError without fbgemm_gpu."""
    rng = np.random.default_rng(seed)
    tables = [
        rng.standard_normal((v, d), dtype=np.float32)
        for v, d in zip(rows, dims, strict=True)
    ]
    ids, starts = [], []
    for v in rows:
        lengths = rng.integers(0, 6, size=num_bags)
        starts.append(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        ids.append(rng.integers(0, min(v, 20), size=lengths.sum(), dtype=np.int64))
    grad_output = rng.standard_normal((num_bags, sum(dims)), dtype=np.float32)
    torch = fbgemm().torch
    for mode in POOLING:
        tbe = TBE(tables, "sgd", lr=lr, mode=mode)
        indices, offsets = tbe.inputs(ids, starts)
        out = tbe.forward(indices, offsets).numpy()
        expected = reference_forward(tables, ids, starts, mode)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, err_msg=mode)
        tbe.step(indices, offsets, torch.from_numpy(grad_output))
        after = reference_sgd(tables, ids, starts, grad_output, lr, mode)
        for t, (got, want, before) in enumerate(
            zip(tbe.weights, after, tables, strict=True)
        ):
            touched = np.unique(ids[t])
            np.testing.assert_allclose(
                got[touched], want[touched], rtol=1e-5, atol=1e-5, err_msg=f"{mode} {t}"
            )
            untouched = np.setdiff1d(np.arange(before.shape[0]), touched)
            np.testing.assert_array_equal(got[untouched], before[untouched])


if __name__ == "__main__":
    check()
    print("TBE matches the NumPy references (forward sum/mean, one EXACT_SGD step)")


class IntNTBE:
    """FBGEMM's CPU int-N TBE (``IntNBitTableBatchedEmbeddingBagsCodegen``, inference)
    holding one table: an :class:`nbbag.QuantizedTable`'s codes, its scales and biases
    rounded to float16 (TBE stores them so, before each row's codes: exact for a 4-bit
    table, whose are float16 already; within float16's rounding for 8 bits).  Pooling
    SUM, float32 output; ``self(ids, starts)`` with int64 ids and B-form starts."""

    def __init__(self, table):
        lib = fbgemm()
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
            IntNBitTableBatchedEmbeddingBagsCodegen,
        )

        self.torch = lib.torch
        kind = lib.SparseType.INT8 if table.bits == 8 else lib.SparseType.INT4
        rows, dim = table.shape
        self.module = IntNBitTableBatchedEmbeddingBagsCodegen(
            [("table", rows, dim, kind, lib.EmbeddingLocation.HOST)],
            device="cpu",
            output_dtype=lib.SparseType.FP32,
            pooling_mode=lib.PoolingMode.SUM,
        )
        self.module.fill_random_weights()  # allocates; overwritten just below
        codes, scale_bias, _ = self.module.split_embedding_weights_with_scale_bias(1)[0]
        code_bytes = dim if table.bits == 8 else dim // 2  # torch's nibble order
        packed = table.to_torch_prepacked()[:, :code_bytes]
        codes.copy_(self.torch.from_numpy(np.ascontiguousarray(packed)))
        params = np.stack([table.scale, table.bias], axis=1).astype(np.float16)
        scale_bias.copy_(self.torch.from_numpy(params.view(np.uint8)))

    def __call__(self, ids: np.ndarray, starts: np.ndarray):
        offsets = np.append(starts, ids.shape[0]).astype(np.int32)
        return self.module(
            self.torch.from_numpy(ids.astype(np.int32)), self.torch.from_numpy(offsets)
        )
