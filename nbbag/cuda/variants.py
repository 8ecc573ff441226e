"""The one place the GPU chooses a kernel variant: which kernel runs a call.

A kernel launch cannot take None, so where the CPU compiles one kernel per presence of
an array (weights, max's winners) the GPU has a kernel of its own for each, and picks
it here: by the mode (a table from :class:`nbbag.Mode`), by whether there are weights,
and by whether the forward records max's winners for the backward.  The host pipeline
(:mod:`nbbag.cuda.api`) asks for a variant and launches it.
"""

from __future__ import annotations

from nbbag.cuda import arrays, backward, forward
from nbbag.modes import Mode

# mode: (unweighted kernel, weighted kernel or None, the kernel that records max's
# winners or None)
_FORWARD = {
    Mode.SUM: (forward.bag_sum, forward.bag_weighted_sum, None),
    Mode.MEAN: (forward.bag_mean, forward.bag_weighted_mean, None),
    Mode.SQRTN: (forward.bag_sqrtn, forward.bag_weighted_sqrtn, None),
    Mode.MAX: (forward.bag_max, None, forward.bag_max_argmax),
}


def records_winners(mode: Mode, keep_context: bool) -> bool:
    """Whether the forward records max's winners (the backward of max needs them)."""
    return keep_context and _FORWARD[mode][2] is not None


def forward_launch(grid, block, batch, out, argmax) -> None:
    """Launch the forward kernel for ``batch`` (``argmax``: where to record max's
    winners, or None)."""
    launch_bags(
        grid, block, batch.weight, batch.indices, batch.offsets,
        batch.per_sample_weights, batch.options, out, argmax,
    )  # fmt: skip


def launch_bags(
    grid, block, weight, indices, offsets, per_sample_weights, options, out, argmax=None
):  # fmt: skip
    """Launch the forward kernel of ``options``' mode on these arrays (``offsets``:
    CSR, or torch's B form; ``per_sample_weights``: flat, or None)."""
    unweighted, weighted, with_winners = _FORWARD[options.mode]
    args = (arrays.kernel_table(weight), indices, offsets)
    if argmax is not None:
        with_winners[grid, block](*args, out, argmax, options.padding_idx)
    elif per_sample_weights is None:
        unweighted[grid, block](*args, out, options.padding_idx)
    else:
        weighted[grid, block](*args, per_sample_weights, out, options.padding_idx)


def coefficients_launch(
    grid, block, indices, offsets, per_sample_weights, argmax, padding_idx, mode, bag_of,
    coefficients,
) -> None:  # fmt: skip
    """Launch the kernel that writes every token's bag and coefficient: for max
    (``argmax`` given), weighted, or unweighted bags."""
    if argmax is not None:
        backward.max_token_coefficients[grid, block](
            indices, offsets, argmax, padding_idx, bag_of, coefficients
        )
    elif per_sample_weights is not None:
        backward.weighted_token_coefficients[grid, block](
            indices, offsets, per_sample_weights, padding_idx, int(mode), bag_of,
            coefficients,
        )  # fmt: skip
    else:
        backward.token_coefficients[grid, block](
            indices, offsets, padding_idx, int(mode), bag_of, coefficients
        )
