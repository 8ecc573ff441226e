"""CPU optimizer kernels: update only the rows a gradient touches, and their state.

One per-row update, ``update_row``, serves every optimizer (``kind`` picks the rule,
once per row) and both ways in: ``apply_row_gradients`` takes a row-sparse gradient,
``apply_fused`` computes each row's gradient from the forward's tokens
(``nbbag.cpu.backward.row_gradient``) into a per-thread scratch block of FUSED_BLOCK
rows and applies them, so no (U, D) gradient is ever built.  Both give bit-identical
results.

State arrays an optimizer does not use are passed empty.  ``hyper`` holds the
hyperparameters at the indices below.

Exact catch-up (SGD with momentum and/or weight decay).  With no gradient, one step of
torch's SGD is linear in a weight element w and its momentum buffer u::

    u' = m u + wd w            w' = w - lr u' = (1 - lr wd) w - lr m u

so k skipped steps are one 2x2 matrix power, the same for every element of the row.
``last_step[r]`` is the step row r was last brought up to date at; a row is caught up
before its gradient is applied, and on request (``rows_behind`` + ``advance_rows``)
before it is read.
"""

import math

import numpy as np
from numba import njit, prange

from nbbag.cpu._intrinsics import prefetch_row
from nbbag.cpu.backward import row_gradient

SGD, ADAGRAD, ROW_WISE_ADAGRAD, ADAM = 0, 1, 2, 3
LR, MOMENTUM, WEIGHT_DECAY, EPS, BETA1, BETA2 = 0, 1, 2, 3, 4, 5
ADAM_STEP_SIZE = 6  # derived per step by step_hyper: lr sqrt(1 - beta2^t) / (1 - beta1^t)
HYPER_SIZE = 7
# Rows whose gradients the fused step computes before it applies their updates: two
# loops over a block overlap more cache misses than one alternating the two (16 rows:
# -17%; 256 rows, whose gradients still fit in L2: another -5 to -9%).
FUSED_BLOCK = 256
# Rows ahead whose weight and state are prefetched: an update is a read-modify-write of
# random rows of a table far larger than the cache, latency-bound like the forward.
ROW_PREFETCH_DISTANCE = 8


@njit(cache=True)
def step_hyper(hyper, step, weight):
    """``hyper`` in the weight's dtype, with this step's derived constants
    (ADAM_STEP_SIZE, computed in float64): ``update_row`` then computes no power per
    row, and a float32 table is updated in float32 arithmetic, as torch does (2x the
    SIMD width of float64)."""
    local = hyper.astype(weight.dtype)
    local[ADAM_STEP_SIZE] = (
        hyper[LR] * math.sqrt(1.0 - hyper[BETA2] ** step) / (1.0 - hyper[BETA1] ** step)
    )
    return local


@njit(cache=True)
def prefetch_update(row, weight, state, second_state):
    """Start loading the rows ``update_row`` will read and write for ``row``."""
    prefetch_row(weight, row, None)
    if state.shape[0] > 0:
        prefetch_row(state, row, None)
    if second_state.shape[0] > 0:
        prefetch_row(second_state, row, None)


@njit(cache=True)
def skipped_steps_matrix(lr, momentum, weight_decay, steps):
    """The 2x2 matrix (a, b, c, d) of ``steps`` gradient-free SGD steps:
    w_k = a w + b u, u_k = c w + d u.  Binary powering: O(log steps)."""
    a, b, c, d = 1.0, 0.0, 0.0, 1.0
    pa, pb, pc, pd = 1.0 - lr * weight_decay, -lr * momentum, weight_decay, momentum
    while steps > 0:
        if steps & 1:
            a, b, c, d = a * pa + b * pc, a * pb + b * pd, c * pa + d * pc, c * pb + d * pd
        pa, pb, pc, pd = (
            pa * pa + pb * pc,
            pa * pb + pb * pd,
            pc * pa + pd * pc,
            pc * pb + pd * pd,
        )
        steps >>= 1
    return a, b, c, d


# Element rules, one source with the GPU (nbbag.cuda.twin): leaves, on 1-D rows.  Each
# stores its results and reads them back, so state is rounded to its dtype as stored.
@njit(cache=True, inline="always")
def advance_element(w, u, i, a, b, c, d):
    """Element i of ``skipped_steps_matrix``'s (a, b, c, d) applied to weight row ``w``
    and momentum row ``u``.  Ownership: the caller owns w[i] and u[i]."""
    w_i, u_i = w[i], u[i]
    w[i] = a * w_i + b * u_i
    u[i] = c * w_i + d * u_i


@njit(cache=True, inline="always")
def momentum_element(w, u, i, g, lr, momentum, weight_decay):
    """SGD with momentum and/or weight decay on element i (torch's rule).
    Ownership: the caller owns w[i] and u[i]."""
    u[i] = momentum * u[i] + (g + weight_decay * w[i])
    w[i] -= lr * u[i]


@njit(cache=True, inline="always")
def adagrad_element(w, squares, i, g, lr, eps):
    """Adagrad on element i.  Ownership: the caller owns w[i] and squares[i]."""
    squares[i] += g * g
    w[i] -= lr * g / (np.sqrt(squares[i]) + eps)


@njit(cache=True, inline="always")
def adam_element(w, exp_avg, exp_avg_sq, i, g, keep1, keep2, step_size, eps):
    """Lazy Adam on element i (``keep`` = 1 - beta, ``step_size`` ADAM_STEP_SIZE).
    Ownership: the caller owns w[i], exp_avg[i] and exp_avg_sq[i]."""
    exp_avg[i] += (g - exp_avg[i]) * keep1
    exp_avg_sq[i] += (g * g - exp_avg_sq[i]) * keep2
    w[i] -= step_size * exp_avg[i] / (np.sqrt(exp_avg_sq[i]) + eps)


@njit(cache=True, inline="always")
def row_wise_accumulator(accumulator, grad_row):
    """RowWiseAdagrad's accumulator after ``grad_row``: plus its mean square (in
    float64).  Writes nothing."""
    mean_square = 0.0
    for i in range(grad_row.shape[0]):
        mean_square += float(grad_row[i]) * grad_row[i]
    if grad_row.shape[0] > 0:
        accumulator += mean_square / grad_row.shape[0]
    return accumulator


@njit(cache=True)
def advance_row(row, steps, weight, momentum_buffer, hyper):
    """Apply ``steps`` gradient-free SGD steps to ``weight[row]`` and its momentum
    buffer, in closed form.

    Ownership: the caller owns row ``row`` of weight and momentum_buffer.
    """
    if steps <= 0:
        return
    a, b, c, d = skipped_steps_matrix(  # in float64 whatever hyper's dtype
        float(hyper[LR]), float(hyper[MOMENTUM]), float(hyper[WEIGHT_DECAY]), steps
    )
    w = weight[row]
    u = momentum_buffer[row]
    for i in range(w.shape[0]):
        advance_element(w, u, i, a, b, c, d)


# Inlined into the calling kernels (Numba IR): inside a parfor the arrays are known not
# to alias, so LLVM vectorises the element loops; a separate function stayed scalar
# (Adam's update 2x slower).
@njit(cache=True, inline="always")
def update_row(
    kind, row, grad_row, weight, state, second_state, row_state, last_step, hyper, step
):
    """Apply step number ``step`` (counted from 1) of optimizer ``kind`` to
    ``weight[row]`` with gradient ``grad_row``, reading and writing only that row of
    the state.  ``hyper`` must come from ``step_hyper(hyper, step, weight)``.  Semantics are
    torch's (SGD, Adagrad, SparseAdam) and FBGEMM's (row-wise Adagrad).

    Ownership: the caller owns row ``row`` of weight and of every state array.
    """
    w = weight[row]
    lr = hyper[LR]
    if kind == SGD:
        if last_step.shape[0] == 0:  # no momentum, no weight decay: plain SGD
            for i in range(w.shape[0]):
                w[i] -= lr * grad_row[i]
            return
        advance_row(row, step - 1 - last_step[row], weight, state, hyper)  # catch up
        u = state[row]
        momentum, weight_decay = hyper[MOMENTUM], hyper[WEIGHT_DECAY]
        for i in range(w.shape[0]):
            momentum_element(w, u, i, grad_row[i], lr, momentum, weight_decay)
        last_step[row] = step
    elif kind == ADAGRAD:
        squares = state[row]
        eps = hyper[EPS]
        for i in range(w.shape[0]):
            adagrad_element(w, squares, i, grad_row[i], lr, eps)
    elif kind == ROW_WISE_ADAGRAD:
        row_state[row] = row_wise_accumulator(row_state[row], grad_row[: w.shape[0]])
        multiplier = lr / (math.sqrt(row_state[row]) + hyper[EPS])
        for i in range(w.shape[0]):
            w[i] -= multiplier * grad_row[i]
    else:  # ADAM, lazy: torch.optim.SparseAdam
        # Locals, not hyper[...] in the loop: stores into w may alias hyper for all
        # LLVM knows, which would reload it each element and block vectorising (2x).
        keep1, keep2 = 1.0 - hyper[BETA1], 1.0 - hyper[BETA2]
        step_size, eps = hyper[ADAM_STEP_SIZE], hyper[EPS]
        exp_avg = state[row]
        exp_avg_sq = second_state[row]
        for i in range(w.shape[0]):
            adam_element(
                w, exp_avg, exp_avg_sq, i, grad_row[i], keep1, keep2, step_size, eps
            )


@njit(parallel=True, cache=True)
def apply_row_gradients(
    kind, weight, rows, values, state, second_state, row_state, last_step, hyper, step
):
    """Apply a row-sparse gradient (``rows`` unique) with ``update_row``.

    Ownership: iteration k of the prange writes row ``rows[k]`` of weight and state.
    """
    hyper = step_hyper(hyper, step, weight)
    for k in prange(rows.shape[0]):
        if k + ROW_PREFETCH_DISTANCE < rows.shape[0]:
            prefetch_update(rows[k + ROW_PREFETCH_DISTANCE], weight, state, second_state)
        update_row(
            kind,
            rows[k],
            values[k],
            weight,
            state,
            second_state,
            row_state,
            last_step,
            hyper,
            step,
        )


@njit(parallel=True, cache=True)
def apply_fused(
    kind,
    weight,
    grad_output,
    bag_of,
    coefficients,
    argmax,
    positions,
    row_ptr,
    rows,
    value_index,
    scale_grad_by_freq,
    state,
    second_state,
    row_state,
    last_step,
    hyper,
    step,
    scratch,
    lanes=None,
):
    """Backward and update in one pass over the rows with ``value_index[k] >= 0``:
    the gradients of a block of rows into ``scratch[chunk]`` (``row_gradient``, with
    ``lanes`` as there), then their updates (``update_row``).  ``scratch`` is
    (chunks, FUSED_BLOCK, >= D).

    Ownership: iteration c of the prange owns ``scratch[c]`` and a contiguous chunk of
    the (unique) rows: their rows of weight and state.
    """
    hyper = step_hyper(hyper, step, weight)
    num_chunks = scratch.shape[0]
    num_rows = rows.shape[0]
    dim = weight.shape[1]
    for c in prange(num_chunks):
        end = (c + 1) * num_rows // num_chunks
        for first in range(c * num_rows // num_chunks, end, FUSED_BLOCK):
            last = min(first + FUSED_BLOCK, end)
            for k in range(first, last):
                if value_index[k] >= 0:
                    row_gradient(
                        grad_output,
                        bag_of,
                        coefficients,
                        argmax,
                        positions,
                        row_ptr[k],
                        row_ptr[k + 1],
                        scale_grad_by_freq,
                        scratch[c, k - first, :dim],
                        lanes,
                    )
            for k in range(first, last):
                if k + ROW_PREFETCH_DISTANCE < end:
                    prefetch_update(
                        rows[k + ROW_PREFETCH_DISTANCE], weight, state, second_state
                    )
                if value_index[k] >= 0:
                    update_row(
                        kind,
                        rows[k],
                        scratch[c, k - first, :dim],
                        weight,
                        state,
                        second_state,
                        row_state,
                        last_step,
                        hyper,
                        step,
                    )


@njit(cache=True)
def rows_behind(indices, last_step, target_step):
    """List the distinct rows of ``indices`` last brought up to date before
    ``target_step``, with how many steps each is behind, and mark them as up to date.

    A serial O(N) scan: ``last_step`` itself marks the rows already listed, so no sort
    and no array of size V is needed.
    Ownership: serial; writes ``last_step`` at the listed rows.
    """
    rows = np.empty(indices.shape[0], dtype=np.int64)
    behind = np.empty(indices.shape[0], dtype=np.int64)
    count = 0
    for i in range(indices.shape[0]):
        row = indices[i]
        if last_step[row] < target_step:
            rows[count] = row
            behind[count] = target_step - last_step[row]
            last_step[row] = target_step
            count += 1
    return rows[:count], behind[:count]


@njit(parallel=True, cache=True)
def advance_rows(weight, rows, behind, momentum_buffer, hyper):
    """``advance_row`` for each of ``rows`` (unique) by ``behind`` steps.

    Ownership: iteration k of the prange writes row ``rows[k]`` of weight and
    momentum_buffer.
    """
    for k in prange(rows.shape[0]):
        advance_row(rows[k], behind[k], weight, momentum_buffer, hyper)
