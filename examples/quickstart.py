"""A first look at nbbag: the forward of every mode on a small table.

Run: python examples/quickstart.py
"""

import time

import numpy as np

import nbbag


def main() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((10, 5)).astype(np.float32)
    indices = np.array([1, 2, 4, 5, 4, 3, 2, 9])
    offsets = np.array([0, 4])  # bag 0 = rows 1, 2, 4, 5; bag 1 = rows 4, 3, 2, 9

    start = time.perf_counter()
    out = nbbag.embedding_bag(weight, indices, offsets, mode="mean")
    first_call = time.perf_counter() - start
    print(f"mean of each bag, shape {out.shape} (first call {first_call:.3f} s):")
    print(np.array2string(out, precision=4))
    assert np.allclose(out[0], weight[[1, 2, 4, 5]].mean(axis=0))
    assert np.allclose(out[1], weight[[4, 3, 2, 9]].mean(axis=0))

    for mode in ("sum", "max", "sqrtn"):
        out = nbbag.embedding_bag(weight, indices, offsets, mode=mode, padding_idx=4)
        print(f"\n{mode}, row 4 as padding:")
        print(np.array2string(out, precision=4))

    weights = rng.uniform(0.5, 2.0, size=indices.shape).astype(np.float32)
    out = nbbag.embedding_bag(
        weight, indices.reshape(2, 4), mode="mean", per_sample_weights=weights.reshape(2, 4)
    )
    print("\nweighted mean, 2-D indices (each row a bag):")
    print(np.array2string(out, precision=4))


if __name__ == "__main__":
    main()
