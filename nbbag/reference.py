"""The specification of nbbag in plain NumPy: slow, obvious, and the thing every kernel
is tested against.

Semantics (the README's table says the same):

* Bag ``b`` is ``indices[offsets[b]:offsets[b + 1]]``; without ``include_last_offset``
  the last bag runs to ``len(indices)``.  2-D ``indices`` of shape (B, L) are B bags of
  length L.
* Entries equal to ``padding_idx`` are left out of the bag (and out of the mean's count).
* ``sum``:   sum_i w_i x_i                        (w_i = 1 without per_sample_weights)
* ``mean``:  sum_i w_i x_i / sum_i w_i
* ``sqrtn``: sum_i w_i x_i / sqrt(sum_i w_i^2)
* ``max``:   the elementwise maximum (no weights allowed)
* A bag with nothing left in it, or whose denominator is 0, gives a row of zeros.
* ``max_norm``: before the reduction, every row looked up whose ``norm_type``-norm
  exceeds ``max_norm`` is scaled in place by ``max_norm / (norm + 1e-7)`` (torch's
  ``embedding_renorm_``).

The reference takes already-valid input; it does no validation of its own.
"""

from __future__ import annotations

import numpy as np

RENORM_EPS = 1e-7  # torch's embedding_renorm_ adds this to the norm


def bag_bounds(indices, offsets=None, include_last_offset=False):
    """Return the (start, end) positions of each bag in the flattened indices."""
    indices = np.asarray(indices)
    if indices.ndim == 2:
        num_bags, length = indices.shape
        return [(b * length, (b + 1) * length) for b in range(num_bags)]
    bounds = [int(o) for o in offsets]
    if not include_last_offset:
        bounds = bounds + [len(indices)] if bounds else [0]  # no offsets: no bags
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def renorm(weight, indices, max_norm, norm_type=2.0):
    """Scale, in place, each distinct row of ``weight`` named in ``indices`` whose norm
    exceeds ``max_norm`` down to ``max_norm`` (torch's ``embedding_renorm_``)."""
    for row in np.unique(np.asarray(indices).ravel()):
        norm = np.linalg.norm(weight[row].astype(np.float64), ord=norm_type)
        if norm > max_norm:
            weight[row] *= max_norm / (norm + RENORM_EPS)


def embedding_bag(
    weight,
    indices,
    offsets=None,
    *,
    mode="mean",
    per_sample_weights=None,
    padding_idx=None,
    include_last_offset=False,
    max_norm=None,
    norm_type=2.0,
    scale_grad_by_freq=False,
):
    """Reduce each bag of rows of ``weight``; returns an array of shape (B, D).

    The arguments are those of :func:`nbbag.embedding_bag`; ``scale_grad_by_freq``
    only affects the gradient.
    """
    mode = str(mode).lower().rsplit(".", 1)[-1]
    indices = np.asarray(indices)
    num_rows, dim = weight.shape
    if max_norm is not None:
        renorm(weight, indices, max_norm, norm_type)
    if padding_idx is not None and padding_idx < 0:
        padding_idx += num_rows

    flat_indices = indices.ravel()
    flat_weights = None if per_sample_weights is None else np.ravel(per_sample_weights)
    bounds = bag_bounds(indices, offsets, include_last_offset)
    out = np.zeros((len(bounds), dim), dtype=np.float64)
    for b, (start, end) in enumerate(bounds):
        positions = [p for p in range(start, end) if flat_indices[p] != padding_idx]
        if not positions:
            continue
        rows = weight[flat_indices[positions]].astype(np.float64)
        if mode == "max":
            out[b] = rows.max(axis=0)
            continue
        w = np.ones(len(positions)) if flat_weights is None else flat_weights[positions]
        w = w.astype(np.float64)
        total = (w[:, None] * rows).sum(axis=0)
        if mode == "sum":
            out[b] = total
        elif mode == "mean":
            out[b] = total / w.sum() if w.sum() != 0 else 0.0
        elif mode == "sqrtn":
            denominator = np.sqrt((w * w).sum())
            out[b] = total / denominator if denominator != 0 else 0.0
        else:
            raise ValueError(f"unknown mode {mode!r}")
    return out.astype(weight.dtype)


def embedding_bag_backward(
    grad_output,
    weight,
    indices,
    offsets=None,
    *,
    mode="mean",
    per_sample_weights=None,
    padding_idx=None,
    include_last_offset=False,
    scale_grad_by_freq=False,
):
    """The gradient of ``sum(grad_output * embedding_bag(weight, ...))``.

    ``weight`` is the table as the forward read it (after any max_norm renorm).  Returns
    ``(weight_grad, rows, weights_grad)``: the dense (V, D) gradient in float64; the
    sorted rows of the sparse gradient (every row with a token in a bag, not padding,
    as torch's sparse gradient: a row whose weights are all 0 is there, with zeros;
    for max, a row that won a dimension); and the gradient with respect to
    ``per_sample_weights`` (flat, float64), or None without weights.

    ``scale_grad_by_freq`` divides each row's gradient by the number of times the row
    appears in the batch's bags (padding left out), as torch documents.
    """
    mode = str(mode).lower().rsplit(".", 1)[-1]
    indices = np.asarray(indices)
    num_rows, dim = weight.shape
    if padding_idx is not None and padding_idx < 0:
        padding_idx += num_rows
    flat_indices = indices.ravel()
    flat_weights = None if per_sample_weights is None else np.ravel(per_sample_weights)
    grad_output = np.asarray(grad_output, dtype=np.float64)
    table = weight.astype(np.float64)

    weight_grad = np.zeros((num_rows, dim))
    contributed = set()
    frequency = np.zeros(num_rows)
    weights_grad = None if flat_weights is None else np.zeros(len(flat_indices))
    for b, (start, end) in enumerate(bag_bounds(indices, offsets, include_last_offset)):
        positions = [p for p in range(start, end) if flat_indices[p] != padding_idx]
        for p in positions:
            frequency[flat_indices[p]] += 1
        if not positions:
            continue
        rows = flat_indices[positions]
        if mode == "max":
            for d in range(dim):
                winner = positions[int(np.argmax(table[rows, d]))]  # first on ties
                weight_grad[flat_indices[winner], d] += grad_output[b, d]
                contributed.add(int(flat_indices[winner]))
            continue
        contributed.update(int(row) for row in rows)
        w = np.ones(len(positions)) if flat_weights is None else flat_weights[positions]
        w = w.astype(np.float64)
        denominator = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w * w).sum())}[mode]
        if denominator == 0:
            continue  # the forward gave zeros: no gradient flows
        for p, w_p in zip(positions, w, strict=True):
            weight_grad[flat_indices[p]] += w_p / denominator * grad_output[b]
        if weights_grad is not None:
            out_b = (w[:, None] * table[rows]).sum(axis=0) / denominator
            for p, w_p, row in zip(positions, w, rows, strict=True):
                dot_row = grad_output[b] @ table[row]
                dot_out = grad_output[b] @ out_b
                weights_grad[p] = {
                    "sum": dot_row,
                    "mean": (dot_row - dot_out) / denominator,
                    "sqrtn": (dot_row - dot_out * w_p / denominator) / denominator,
                }[mode]
    if scale_grad_by_freq:
        weight_grad /= np.maximum(frequency, 1)[:, None]
    return weight_grad, np.array(sorted(contributed), dtype=np.int64), weights_grad
