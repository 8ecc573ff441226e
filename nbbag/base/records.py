"""The records the pipelines hand on: built once, read by every later stage.

``ForwardOptions`` holds the forward's scalar options, checked; ``BagBatch`` a
validated forward call; ``BagContext`` what the backward needs from a forward;
``TokenGroups`` a batch's tokens grouped by row, which every row-gradient kernel reads.
They are the same for both backends: on the GPU their arrays are device arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from nbbag.modes import Mode


class ForwardOptions(NamedTuple):
    """The forward's options, checked against one table (see
    :func:`nbbag.embedding_bag`)."""

    mode: Mode
    padding_idx: int  # a row in [0, V), or NO_PADDING
    include_last_offset: bool
    max_norm: float | None
    norm_type: float
    scale_grad_by_freq: bool


class BagBatch(NamedTuple):
    """A validated forward call, in the form the kernels take."""

    weight: Any  # (V, D) float32/float64/float16/bfloat16, C-contiguous
    indices: Any  # (N,) int32/int64, C-contiguous, every value in [0, V)
    offsets: Any  # (B + 1,) int64, 0 = offsets[0] <= ... <= offsets[B] <= N
    per_sample_weights: Any  # (N,) in the weight's compute dtype, or None
    options: ForwardOptions
    indices_shape: tuple  # as the caller gave them: (N,) or (B, L)

    @property
    def num_bags(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def mode(self) -> Mode:
        return self.options.mode

    @property
    def padding_idx(self) -> int:
        return self.options.padding_idx


class BagContext:
    """What :func:`nbbag.embedding_bag_bwd` needs from a forward: the validated inputs
    (nbbag's own arrays: none of the caller's buffers, so that a caller who refills them
    cannot change the batch), a reference to the weight and its shape then, the winners
    of ``max`` (the position of each (bag, dimension)'s winning token) and, for weighted
    mean and sqrtn, a copy of the output.

    ``features``: 1, or F > 1 for a collection's stack on the CPU, whose B bags are
    feature-major (feature f's bag b' is bag f * B / F + b') while the rows of its
    gradient and winners are bag-major (bag f * B / F + b' is row b' * F + f): the
    collection's (B / F, F * D) output and gradient are then those rows as they are.
    """

    __slots__ = ("batch", "weight_shape", "out", "argmax", "features")

    def __init__(self, batch: BagBatch, out, argmax, features: int = 1):
        self.batch = batch
        self.weight_shape = tuple(batch.weight.shape)
        self.out = out
        self.argmax = argmax
        self.features = features

    @property
    def indices_shape(self) -> tuple:
        return self.batch.indices_shape

    def output_for(self, grad_output):
        """The output the weights' gradient reads: the kept copy (mean and sqrtn), or
        ``grad_output``, of the same shape, as a stand-in the kernels do not read."""
        return grad_output if self.out is None else self.out

    def __repr__(self) -> str:
        return (
            f"BagContext(mode={self.batch.mode.name.lower()}, bags={self.batch.num_bags}, "
            f"tokens={self.batch.indices.shape[0]}, weight={self.weight_shape})"
        )


class TokenGroups(NamedTuple):
    """A batch's tokens grouped by row: what every row's gradient is made of.

    Row ``rows[k]``'s tokens are ``positions[row_ptr[k]:row_ptr[k + 1]]``, in increasing
    position; token p adds ``coefficients[p] * grad_output[bag_of[p]]`` to its row (for
    max, dimension d of ``grad_output[b]`` goes to the token ``argmax[b, d]``).
    """

    bag_of: Any  # (N,) the bag of each token; -1 for padding and tokens in no bag
    coefficients: Any  # (N,) each token's coefficient (max: 1 for a winner, else 0)
    argmax: Any  # the forward's max winners (B, D); None but for max (empty on a GPU)
    rows: Any  # (U,) sorted rows with at least one token
    row_ptr: Any  # (U + 1,)
    positions: Any  # token positions grouped by row
    value_index: Any  # (U,) row k's slot among the rows that get a gradient, or -1
    num_contributing: int  # how many rows get a gradient (max: the winners; else all)
