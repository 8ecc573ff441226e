"""Where the GPU forward's and step's time goes, and candidate forward kernels.

A probe for one lease (its findings are in RESULTS.md's GPU section): (1) the forward's
sum kernel launched alone against candidates that keep more loads in flight, each
checked against torch and timed with CUDA events (median of 30), beside torch's and
nbbag's whole forward; (2) the kernels of ``nbbag.embedding_bag`` and of a fused SGD
step under torch's profiler (CUPTI sees Numba's launches too); (3) with ``--host``,
what a forward spends beside its kernel (allocation, ``out=``, a cProfile of the host).
The candidates all lost to the current kernel on an H200; they stay here as the record
of what was tried.

Usage: ``python benchmarks/gpu_probe.py [--sim | --host [PROFILE_PATH] | --step-sweep]``
(``--sim``: only check the candidates on tiny inputs, under NUMBA_ENABLE_CUDASIM=1;
``--host`` with a path also writes the cProfile there; ``--step-sweep``: (4) the step
under other launch settings of the sort and the update; ``--two-steps``: two steps and
nothing else, to run under ``ncu``).
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
from numba import cuda, float64

from nbbag.base.halves import widen
from nbbag.cuda.forward import bag_sum, group_item


@cuda.jit(device=True, inline=True)
def _load(weight, row, d, dim, padding_idx):
    if row != padding_idx and d < dim:
        return float64(widen(weight[row, d]))
    return 0.0


@cuda.jit
def sum_tokens4(weight, indices, offsets, out, padding_idx):
    """Dimension loop outside, tokens four at a time inside."""
    b = group_item()
    if b < out.shape[0]:
        start, end = offsets[b], offsets[b + 1]
        dim = out.shape[1]
        for d in range(cuda.threadIdx.x, dim, cuda.blockDim.x):
            total = 0.0
            p = start
            while p + 4 <= end:
                x0 = _load(weight, indices[p], d, dim, padding_idx)
                x1 = _load(weight, indices[p + 1], d, dim, padding_idx)
                x2 = _load(weight, indices[p + 2], d, dim, padding_idx)
                x3 = _load(weight, indices[p + 3], d, dim, padding_idx)
                total += x0
                total += x1
                total += x2
                total += x3
                p += 4
            while p < end:
                total += _load(weight, indices[p], d, dim, padding_idx)
                p += 1
            out[b, d] = total


@cuda.jit(device=True, inline=True)
def _load4(weight, row, d0, g, dim, padding_idx):
    """Dimensions d0, d0 + g, d0 + 2g, d0 + 3g of ``row`` (0 outside or for padding)."""
    return (
        _load(weight, row, d0, dim, padding_idx),
        _load(weight, row, d0 + g, dim, padding_idx),
        _load(weight, row, d0 + 2 * g, dim, padding_idx),
        _load(weight, row, d0 + 3 * g, dim, padding_idx),
    )


@cuda.jit(device=True, inline=True)
def _store4(out, b, d0, g, dim, a0, a1, a2, a3):
    out[b, d0] = a0
    if d0 + g < dim:
        out[b, d0 + g] = a1
    if d0 + 2 * g < dim:
        out[b, d0 + 2 * g] = a2
    if d0 + 3 * g < dim:
        out[b, d0 + 3 * g] = a3


@cuda.jit(device=True, inline=True)
def _add_tokens4(weight, indices, first, last, d0, g, dim, padding_idx, a0, a1, a2, a3):
    """(a0, a1, a2, a3) plus :func:`_load4` of tokens first:last, one token at a time."""
    for p in range(first, last):
        x0, x1, x2, x3 = _load4(weight, indices[p], d0, g, dim, padding_idx)
        a0 += x0
        a1 += x1
        a2 += x2
        a3 += x3
    return a0, a1, a2, a3


def _dims4_kernel(four_tokens: bool):
    """Four dimensions a lane, one token at a time or (``four_tokens``) four at a
    time, the rest one at a time: 16 loads in flight."""

    def kernel(weight, indices, offsets, out, padding_idx):
        b = group_item()
        if b < out.shape[0]:
            start, end = offsets[b], offsets[b + 1]
            dim = out.shape[1]
            g = cuda.blockDim.x
            for d0 in range(cuda.threadIdx.x, dim, 4 * g):
                a0 = a1 = a2 = a3 = 0.0
                p = start
                while four_tokens and p + 4 <= end:
                    x00, x01, x02, x03 = _load4(weight, indices[p], d0, g, dim, padding_idx)
                    x10, x11, x12, x13 = _load4(
                        weight, indices[p + 1], d0, g, dim, padding_idx
                    )
                    x20, x21, x22, x23 = _load4(
                        weight, indices[p + 2], d0, g, dim, padding_idx
                    )
                    x30, x31, x32, x33 = _load4(
                        weight, indices[p + 3], d0, g, dim, padding_idx
                    )
                    a0 = a0 + x00 + x10 + x20 + x30
                    a1 = a1 + x01 + x11 + x21 + x31
                    a2 = a2 + x02 + x12 + x22 + x32
                    a3 = a3 + x03 + x13 + x23 + x33
                    p += 4
                a0, a1, a2, a3 = _add_tokens4(
                    weight, indices, p, end, d0, g, dim, padding_idx, a0, a1, a2, a3
                )
                _store4(out, b, d0, g, dim, a0, a1, a2, a3)

    kernel.__name__ = "sum_dims4_tokens4" if four_tokens else "sum_dims4"
    return cuda.jit(kernel)


sum_dims4 = _dims4_kernel(False)
sum_dims4_tokens4 = _dims4_kernel(True)


CANDIDATES = {
    "current": bag_sum,
    "tokens4": sum_tokens4,
    "dims4": sum_dims4,
    "dims4_tokens4": sum_dims4_tokens4,
}


def _launch(kernel, weight, indices, offsets, out, group=None):
    from nbbag.cuda import launch

    grid, block = launch.grouped(out.shape[0], out.shape[1])
    kernel[grid, block](weight, indices, offsets, out, -1)


def check_simulated() -> None:
    rng = np.random.default_rng(0)
    for dim in (5, 16, 40):
        weight = rng.standard_normal((30, dim)).astype(np.float32)
        lengths = rng.integers(0, 11, 9)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = rng.integers(0, 30, offsets[-1]).astype(np.int64)
        expected = np.stack(
            [
                weight[indices[a:b]].sum(0)
                for a, b in zip(offsets, offsets[1:], strict=False)
            ]
        )
        for name, kernel in CANDIDATES.items():
            out = cuda.device_array((9, dim), np.float32)
            _launch(
                kernel,
                cuda.to_device(weight),
                cuda.to_device(indices),
                cuda.to_device(offsets),
                out,
            )
            np.testing.assert_allclose(
                out.copy_to_host(),
                expected,
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"{name} D={dim}",
            )
    print("all candidates agree with NumPy")


def _median_ms(function, repeat=30) -> float:
    times = []
    for _ in range(repeat):
        start, end = cuda.event(), cuda.event()
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(cuda.event_elapsed_time(start, end))
    return statistics.median(times)


def profile(torch, label, function) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    function()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            function()
        torch.cuda.synchronize()
    print(f"== {label}: 5 calls")
    print(
        prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=14, max_name_column_width=60
        )
    )


def probe_shape(dim: int, num_bags: int, bag_size: int, profile_step: bool) -> None:
    """Time torch, nbbag and each candidate kernel at one shape (V = 10M, uniform)."""
    import torch
    import torch.nn.functional as F

    import nbbag

    num_rows = 10_000_000
    weight = torch.randn(num_rows, dim, device="cuda")
    tokens = num_bags * bag_size
    indices = torch.randint(0, num_rows, (tokens,), device="cuda")
    offsets = torch.arange(0, tokens + 1, bag_size, device="cuda")
    starts = offsets[:-1]
    expected = F.embedding_bag(indices, weight, starts, mode="sum")
    w, i, o = (cuda.as_cuda_array(t) for t in (weight, indices, offsets))
    moved = tokens * dim * 4 + tokens * 8 + num_bags * dim * 4
    print(f"\n### D={dim} bags={num_bags} x {bag_size}")
    t = _median_ms(lambda: F.embedding_bag(indices, weight, starts, mode="sum"))
    print(f"torch F.embedding_bag      {t:7.3f} ms {moved / t / 1e6:6.0f} GB/s")
    t = _median_ms(lambda: nbbag.embedding_bag(weight, indices, starts))
    print(f"nbbag.embedding_bag        {t:7.3f} ms {moved / t / 1e6:6.0f} GB/s")
    for name, kernel in CANDIDATES.items():
        out = cuda.device_array((num_bags, dim), np.float32)
        _launch(kernel, w, i, o, out)
        got = torch.as_tensor(out, device="cuda")
        error = float((got - expected).norm() / expected.norm())
        t = _median_ms(lambda k=kernel, out=out: _launch(k, w, i, o, out))
        print(
            f"kernel {name:<19} {t:7.3f} ms {moved / t / 1e6:6.0f} GB/s rel.err {error:.1e}"
        )
    if not profile_step:
        return
    profile(torch, "nbbag forward", lambda: nbbag.embedding_bag(weight, indices, starts))
    table = weight.clone()
    optimizer = nbbag.optim.SGD(table, lr=0.01)
    grad_output = torch.randn(num_bags, dim, device="cuda")

    def step():
        _, ctx = nbbag.embedding_bag_fwd(table, indices, starts)
        optimizer.step_fused(grad_output, ctx)

    profile(torch, "nbbag step", step)


def _step_batch(dim: int, num_bags: int, bag_size: int):
    """(table, ids, bag starts, grad_output) on the GPU: V = 10M, uniform ids."""
    import torch

    num_rows = 10_000_000
    table = torch.randn(num_rows, dim, device="cuda")
    tokens = num_bags * bag_size
    indices = torch.randint(0, num_rows, (tokens,), device="cuda")
    starts = torch.arange(0, tokens, bag_size, device="cuda")
    return table, indices, starts, torch.randn(num_bags, dim, device="cuda")


def _sgd_step(table, indices, starts, grad_output):
    """A function that runs one fused SGD step of ``table`` on the batch."""
    import nbbag

    optimizer = nbbag.optim.SGD(table, lr=0.01)

    def step():
        _, ctx = nbbag.embedding_bag_fwd(table, indices, starts)
        optimizer.step_fused(grad_output, ctx)

    return step


def step_sweep(dim: int = 128, num_bags: int = 65536, bag_size: int = 50) -> None:
    """The fused SGD step under launch settings of the radix sort (chunks per
    multiprocessor) and of the fused update (threads per block): each setting's table
    after one step must equal the default's bit for bit (the step is deterministic),
    then its median step time, and a profile of the kernels of the default and of the
    fastest setting."""
    import torch

    from nbbag.cuda import launch

    weight, *batch = _step_batch(dim, num_bags, bag_size)
    settings = [(128, 128), (64, 256), (128, 256), (256, 128)]
    table = weight.clone()
    expected = None
    times = {}
    for chunks_per_sm, row_block in settings:
        launch.CHUNKS_PER_SM, launch.ROW_BLOCK_SIZE = chunks_per_sm, row_block
        table.copy_(weight)
        step = _sgd_step(table, *batch)
        step()
        torch.cuda.synchronize()
        if expected is None:
            expected = table.clone()
        same = bool(torch.equal(table, expected))
        times[chunks_per_sm, row_block] = _median_ms(step, repeat=15)
        print(
            f"chunks/SM {chunks_per_sm:4d} row block {row_block:4d}: "
            f"{times[chunks_per_sm, row_block]:7.3f} ms, same table {same}"
        )
    best = min(times, key=times.get)
    for label, (chunks_per_sm, row_block) in (("default", settings[0]), ("best", best)):
        launch.CHUNKS_PER_SM, launch.ROW_BLOCK_SIZE = chunks_per_sm, row_block
        step = _sgd_step(table, *batch)
        profile(torch, f"step, {label} {chunks_per_sm}/{row_block}", step)
    launch.CHUNKS_PER_SM, launch.ROW_BLOCK_SIZE = settings[0]


def two_steps(dim: int = 128, num_bags: int = 65536, bag_size: int = 50) -> None:
    """Two fused SGD steps, for a kernel profiler to read the second's launches."""
    import torch

    step = _sgd_step(*_step_batch(dim, num_bags, bag_size))
    step()
    step()
    torch.cuda.synchronize()


def main() -> None:
    probe_shape(128, 65536, 50, profile_step=True)
    probe_shape(64, 262144, 20, profile_step=False)


def host_costs() -> None:
    """What an end-to-end forward spends beside its kernel (D = 128, 65,536 x 50)."""
    import cProfile
    import pstats
    import time

    import torch

    import nbbag
    import nbbag.cuda.arrays

    num_rows, dim, num_bags, bag_size = 10_000_000, 128, 65536, 50
    weight = torch.randn(num_rows, dim, device="cuda")
    tokens = num_bags * bag_size
    indices = torch.randint(0, num_rows, (tokens,), device="cuda")
    offsets = torch.arange(0, tokens, bag_size, device="cuda")
    out = cuda.device_array((num_bags, dim), np.float32)
    torch_out = torch.empty(num_bags, dim, device="cuda")

    def alloc():
        cuda.device_array((num_bags, dim), np.float32)

    def forward(**kwargs):
        return lambda: nbbag.embedding_bag(weight, indices, offsets, mode="sum", **kwargs)

    slots = cuda.device_array(4, np.int64)

    def copy_back():
        slots.copy_to_host()

    def fill_slots():
        nbbag.cuda.arrays.fill(slots, 1)

    from nbbag.cuda import checks, launch
    from nbbag.cuda import forward as kernels

    def checks_first():  # the forward launched after its checks were read back
        unchecked = checks.inputs_for_unchecked_launch
        checks.inputs_for_unchecked_launch = lambda *args: None
        try:
            nbbag.embedding_bag(weight, indices, offsets, mode="sum")
        finally:
            checks.inputs_for_unchecked_launch = unchecked

    w, i, o = (cuda.as_cuda_array(t) for t in (weight, indices, offsets))
    csr = cuda.as_cuda_array(torch.arange(0, tokens + 1, bag_size, device="cuda"))
    grid, block = launch.grouped(num_bags, dim)

    cases = {
        "kernel batch_checks": lambda: checks.launch_batch_checks(i, o, num_rows),
        "kernel bag_sum, CSR": lambda: kernels.bag_sum[grid, block](w, i, csr, out, -1),
        "kernel bag_sum, B": lambda: kernels.bag_sum[grid, block](w, i, o, out, -1),
        "forward, checks first": checks_first,
        "as_cuda_array": lambda: cuda.as_cuda_array(weight),
        "as_cuda_array nosync": lambda: cuda.as_cuda_array(weight, sync=False),
        "fill 4 (1 launch)": fill_slots,
        "copy 4 to host": copy_back,
        "device_array(33 MB)": alloc,
        "forward": forward(),
        "forward out=numba": forward(out=out),
        "forward out=torch": forward(out=torch_out),
        "torch forward": lambda: torch.nn.functional.embedding_bag(
            indices, weight, offsets, mode="sum"
        ),
    }
    for name, function in cases.items():
        try:
            function()
        except Exception as error:  # noqa: BLE001 (a probe: report and go on)
            print(f"{name}: {error!r}")
            continue
        cuda.synchronize()
        walls = []
        for _ in range(30):
            begin = time.perf_counter()
            function()
            cuda.synchronize()
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - begin)
        events = _median_ms(function)
        print(
            f"{name:<22} wall {statistics.median(walls) * 1e3:7.3f} ms, "
            f"events {events:7.3f} ms"
        )
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        nbbag.embedding_bag(weight, indices, offsets, mode="sum")
    cuda.synchronize()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(14)
    stats.sort_stats("cumulative").print_stats(40)
    if len(sys.argv) > 2:  # a path: the whole profile, for pstats on another machine
        stats.dump_stats(sys.argv[2])


if __name__ == "__main__":
    if "--sim" in sys.argv:
        check_simulated()
    elif "--host" in sys.argv:
        host_costs()
    elif "--step-sweep" in sys.argv:
        step_sweep()
    elif "--two-steps" in sys.argv:
        two_steps()
    else:
        main()
