"""Per-element rules of a collection's features read as one stack's bags, shared by the
CPU and GPU ``combine_features`` kernels (compiled for either target,
:mod:`nbbag.base.shared`).

A stack holds the tables of one width and mode, row after row, then one spare row that
stands for every table's padding; a feature's id is moved to its table's rows there.
"""

from nbbag.base.shared import shared


@shared
def start_is_valid(b, start, previous, count):
    """Whether ``start``, bag b's first token in torch's B form (relative to its
    feature's ``count`` ids), may follow ``previous``, bag b - 1's (0 for bag 0): bag 0
    starts at 0, starts never decrease, and none is past the end."""
    return (b > 0 or start == 0) and previous <= start and start <= count


@shared
def stack_row(row, base, num_rows, padding, pad_row):
    """(the stack's row for id ``row`` of a table whose rows start at ``base``, whether
    ``row`` is in [0, num_rows)): ``pad_row`` for the table's ``padding`` row."""
    # ``&``, not ``and``: no branch a token (the CPU's combine at 53,248 ids: 79-89 ->
    # 73-75 us)
    return (pad_row if row == padding else base + row), (row >= 0) & (row < num_rows)
