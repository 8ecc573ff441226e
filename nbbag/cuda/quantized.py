"""CUDA kernel of row-wise quantized tables: :mod:`nbbag.cpu.quantized`'s forward (the
same arguments, but ``lanes``; the layout is described there), one thread group per
bag, lanes along D (``launch.grouped(B, D)``), as the float forward kernels.

Each lane dequantizes its dimension of each row (``code * scale + bias``) and reduces it
by the mode with the float kernels' finish (:func:`nbbag.cuda.forward.finish_dev`).
"""

from numba import cuda

from nbbag.cuda.forward import finish_dev, group_item
from nbbag.modes import Mode


@cuda.jit(device=True, inline=True)
def code_dev(data, row, d, bits, dim):
    """The code of column d of ``row``: a byte, or a nibble (byte k holds columns k
    and k + dim / 2, in its low and high nibbles)."""
    if bits == 8:
        return data[row, d]
    half = dim // 2
    if d < half:
        return data[row, d] & 15
    return data[row, d - half] >> 4


@cuda.jit
def quantized_bags(
    data, params, bits, indices, offsets, per_sample_weights, out, padding_idx, mode
):  # fmt: skip
    """out[b] = bag b's rows, dequantized and reduced by ``mode`` (sum, mean and sqrtn
    weighted by ``per_sample_weights``, an array: ones for none; max its elementwise
    max, zeros for an empty bag); padding left out.

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    b = group_item()
    if b >= out.shape[0]:
        return
    last = params.shape[1] - 1
    start, end = offsets[b], offsets[b + 1]
    for d in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
        total = 0.0
        weight_sum = 0.0
        weight_square_sum = 0.0
        found = False
        for position in range(start, end):
            row = indices[position]
            if row == padding_idx:
                continue
            code = code_dev(data, row, d, bits, out.shape[1])
            value = code * params[row, last - 1] + params[row, last]
            if mode == Mode.MAX:
                if not found or value > total:
                    total = value
                found = True
            else:
                w = per_sample_weights[position]
                total += w * value
                weight_sum += w
                weight_square_sum += w * w
        out[b, d] = finish_dev(total, weight_sum, weight_square_sum, mode)
