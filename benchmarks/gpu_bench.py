"""nbbag's GPU kernels against torch CUDA on a real GPU (H100/H200): forward sum and
mean, and a training step (forward + sparse backward + SGD update).

A plain script, not collected by pytest (it needs a GPU, torch with CUDA and
numba-cuda).  Each case is warmed up (JIT compilation) outside the timed region, then
timed with CUDA events over ``--repeat`` runs, nbbag and torch interleaved; the median
is reported, with the bandwidth it implies (bytes the kernel must move) against a
measured device-to-device copy.

Usage: ``python benchmarks/gpu_bench.py [--rows 10000000] [--dim 128] [--bags 65536]
[--bag-size 50] [--repeat 20] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics


def _timer(torch, function, repeat: int) -> list[float]:
    """Seconds per call of ``function`` (already warmed up), one CUDA event pair each."""
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def copy_bandwidth(torch, repeat: int) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of 2 GiB."""
    source = torch.empty(2**29, dtype=torch.float32, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    seconds = statistics.median(_timer(torch, lambda: target.copy_(source), repeat))
    return 2 * source.numel() * 4 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--bags", type=int, default=65536)
    parser.add_argument("--bag-size", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numba.cuda
    import torch
    import torch.nn.functional as F

    import nbbag

    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py needs a CUDA GPU and torch built with CUDA")
    generator = torch.Generator(device="cuda").manual_seed(0)
    num_rows, dim, num_bags, bag_size = args.rows, args.dim, args.bags, args.bag_size
    weight = torch.randn(num_rows, dim, device="cuda", generator=generator)
    tokens = num_bags * bag_size
    indices = torch.randint(0, num_rows, (tokens,), device="cuda", generator=generator)
    offsets = torch.arange(0, tokens, bag_size, device="cuda")
    peak = copy_bandwidth(torch, args.repeat)
    # What a forward must move at least: the rows read, the indices, the output.
    forward_bytes = tokens * dim * 4 + tokens * 8 + num_bags * dim * 4
    results = {"copy_GBps": peak / 1e9, "cases": []}

    def nbbag_forward(mode):
        def run():
            nbbag.embedding_bag(weight, indices, offsets, mode=mode)
            numba.cuda.synchronize()

        return run

    def torch_forward(mode):
        return lambda: F.embedding_bag(indices, weight, offsets, mode=mode)

    cases = []
    for mode in ("sum", "mean"):
        cases.append((f"forward-{mode}", "nbbag", nbbag_forward(mode), forward_bytes))
        cases.append((f"forward-{mode}", "torch", torch_forward(mode), forward_bytes))

    # Training step: forward, sparse backward, SGD on the touched rows.
    nbbag_table = weight.clone()
    optimizer = nbbag.optim.SGD(nbbag_table, lr=0.01)
    grad_output = torch.ones(num_bags, dim, device="cuda")

    def nbbag_step():
        _, ctx = nbbag.embedding_bag_fwd(nbbag_table, indices, offsets, mode="sum")
        optimizer.step_fused(grad_output, ctx)
        numba.cuda.synchronize()

    bag = torch.nn.EmbeddingBag.from_pretrained(
        weight.clone(), freeze=False, mode="sum", sparse=True
    )
    torch_optimizer = torch.optim.SGD(bag.parameters(), lr=0.01)

    def torch_step():
        torch_optimizer.zero_grad(set_to_none=True)
        bag(indices, offsets).backward(grad_output)
        torch_optimizer.step()

    # forward + gradient rows read and written once, at least
    step_bytes = forward_bytes + 2 * tokens * dim * 4
    cases.append(("step-sgd", "nbbag", nbbag_step, step_bytes))
    cases.append(("step-sgd", "torch", torch_step, step_bytes))

    for _, _, function, _ in cases:  # warm-up: JIT compilation, allocator caches
        function()
        function()
    torch.cuda.synchronize()
    timings = {(name, impl): [] for name, impl, _, _ in cases}
    for _ in range(args.repeat):  # interleaved, so drifts hit every case alike
        for name, impl, function, _ in cases:
            timings[name, impl].extend(_timer(torch, function, 1))
    for name, impl, _, moved in cases:
        seconds = statistics.median(timings[name, impl])
        results["cases"].append(
            {
                "case": name,
                "impl": impl,
                "ms": seconds * 1e3,
                "GBps": moved / seconds / 1e9,
                "fraction_of_copy": moved / seconds / peak,
            }
        )
    if args.json:
        print(json.dumps(results))
        return
    print(f"device copy: {results['copy_GBps']:.0f} GB/s (read + write)")
    print(f"V={num_rows} D={dim} bags={num_bags} x {bag_size}")
    for row in results["cases"]:
        print(
            f"{row['case']:<14} {row['impl']:<6} {row['ms']:8.3f} ms "
            f"{row['GBps']:7.0f} GB/s ({row['fraction_of_copy']:.0%} of copy)"
        )


if __name__ == "__main__":
    main()
