"""The functional front door: validate, pick the kernel, run it."""

from __future__ import annotations

import numpy as np

from nbbag._validate import BagBatch, validate_forward
from nbbag.cpu import forward
from nbbag.modes import Mode

# A kernel per mode, chosen once per call: the inner loops never branch on the mode.
_UNWEIGHTED_KERNELS = {
    Mode.SUM: forward.bag_sum,
    Mode.MEAN: forward.bag_mean,
    Mode.SQRTN: forward.bag_sqrtn,
    Mode.MAX: forward.bag_max,
}
_WEIGHTED_KERNELS = {
    Mode.SUM: forward.bag_weighted_sum,
    Mode.MEAN: forward.bag_weighted_mean,
    Mode.SQRTN: forward.bag_weighted_sqrtn,
}


def embedding_bag(
    weight,
    indices,
    offsets=None,
    *,
    mode: Mode | str = "mean",
    per_sample_weights=None,
    padding_idx: int | None = None,
    include_last_offset: bool = False,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
) -> np.ndarray:
    """Look up the rows of ``weight`` named by each bag of ``indices`` and reduce them.

    The semantics are those of ``torch.nn.functional.embedding_bag`` (note the argument
    order: the table comes first), plus the ``sqrtn`` mode and weighted ``mean``/``sqrtn``.

    Parameters
    ----------
    weight : ndarray, shape (V, D), float32 or float64, C-contiguous
        The embedding table.  Only modified with ``max_norm``.
    indices : array_like of int32 or int64, shape (N,) or (B, L)
        Row ids in [0, V).  A 2-D array is B bags of length L (``offsets`` must be None).
    offsets : array_like of int32 or int64, shape (B,) or (B + 1,), optional
        Start of each bag in 1-D ``indices``; the last bag runs to N.  With
        ``include_last_offset=True`` it holds B + 1 entries (CSR form) and indices past
        the last entry belong to no bag.
    mode : {"sum", "mean", "max", "sqrtn"} or Mode, default "mean"
        ``sqrtn`` is sum / sqrt(count), or sum_i w_i x_i / sqrt(sum_i w_i^2) with weights.
    per_sample_weights : array_like of float, shape of ``indices``, optional
        A weight per index: a weighted sum, a weighted mean (sum_i w_i x_i / sum_i w_i)
        or a weighted sqrtn.  Not allowed with ``max``.
    padding_idx : int, optional
        A row left out of every bag and out of the mean's count; negative counts from
        the end.
    include_last_offset : bool, default False
        Whether ``offsets`` holds the end of the last bag too.
    max_norm : float, optional
        Rows looked up whose ``norm_type``-norm exceeds it are scaled down to it, in
        ``weight``, before the reduction (as torch does).
    norm_type : float, default 2.0
        The p of the p-norm for ``max_norm`` (``inf`` allowed).
    scale_grad_by_freq : bool, default False
        Only affects the gradient (see ``embedding_bag_bwd``); accepted here so torch
        code ports unchanged.

    Returns
    -------
    ndarray, shape (B, D), weight's dtype
        One row per bag; a bag with nothing in it (or only padding) gives zeros.

    Raises
    ------
    IndexError
        An index outside [0, V).
    ValueError, TypeError
        Malformed offsets, shapes, dtypes or options; the message names the argument.

    Examples
    --------
    >>> import numpy as np, nbbag
    >>> weight = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    >>> nbbag.embedding_bag(weight, [1, 2, 4, 5, 4, 3, 2, 9], [0, 4], mode="sum")
    array([[24., 28.],
           [36., 40.]], dtype=float32)
    """
    batch = validate_forward(
        weight,
        indices,
        offsets,
        mode=mode,
        per_sample_weights=per_sample_weights,
        padding_idx=padding_idx,
        include_last_offset=include_last_offset,
        max_norm=max_norm,
        norm_type=norm_type,
        scale_grad_by_freq=scale_grad_by_freq,
    )
    return _forward(batch)


def _forward(batch: BagBatch) -> np.ndarray:
    """Run the forward kernels on validated inputs."""
    weight = batch.weight
    if batch.max_norm is not None:
        forward.renorm_rows(
            weight, np.unique(batch.indices), batch.max_norm, batch.norm_type
        )
    out = np.empty((batch.num_bags, weight.shape[1]), dtype=weight.dtype)
    if batch.per_sample_weights is None:
        kernel = _UNWEIGHTED_KERNELS[batch.mode]
        kernel(weight, batch.indices, batch.offsets, out, batch.padding_idx)
    else:
        kernel = _WEIGHTED_KERNELS[batch.mode]
        kernel(
            weight,
            batch.indices,
            batch.offsets,
            batch.per_sample_weights,
            out,
            batch.padding_idx,
        )
    return out
