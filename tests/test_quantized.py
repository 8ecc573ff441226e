"""Row-wise quantized tables: quantize_rows gives torch's prepacked codes, the forward
equals torch's quantized op (sum, the one mode it computes) and the float forward on
the dequantized table (every mode, weights, padding, empty bags, hot rows; on both
backends: the GPU's kernel on a table moved by ``to_device``); bad input and every
training entry point are refused."""

from __future__ import annotations

import numpy as np
import pytest
from backends import Backend
from strategies import assert_close, cases

import nbbag


def table(rng, rows=30, dim=16) -> np.ndarray:
    return (rng.standard_normal((rows, dim)) * rng.uniform(0.1, 3, (rows, 1))).astype(
        np.float32
    )


def check_forward(case, backend: Backend) -> None:
    bits = 4 if case.weight.shape[1] % 2 == 0 else 8
    for b in {bits, 8}:
        q = nbbag.quantize_rows(case.weight, bits=b)
        on_backend = q.to_device() if backend.name == "cuda" else q
        out = backend.host(case.call(nbbag.embedding_bag, on_backend, to=backend.array))
        weights = case.kwargs.get("per_sample_weights")
        kwargs = dict(case.kwargs)
        if weights is not None:
            kwargs["per_sample_weights"] = weights.astype(np.float32)
        expected = nbbag.embedding_bag(q.dequantize(), case.indices, case.offsets, **kwargs)
        assert out.dtype == np.float32 and out.shape == expected.shape
        assert_close(out, expected, np.float32, case.longest_bag)


def test_forward_equals_the_float_forward_on_the_dequantized_table(backend):
    backend.examples(
        cases(allow_max_norm=False, tiny=backend.tiny),
        lambda case: check_forward(case, backend),
        cuda_examples=12,
        cpu_examples=25,
    )


def awkward_table(rng, rows=64, dim=16) -> np.ndarray:
    """Rows of every scale, rows whose codes fall on ties (range 30 at 4 bits and 510
    at 8 bits make the scale 2, and the odd integers half-way), a constant row, a row
    of zeros, a row whose range is tiny: where a quantizer's rounding shows."""
    scales = rng.choice([1e-3, 0.1, 1.0, 37.0], size=(rows, 1))
    weight = (rng.standard_normal((rows, dim)) * scales).astype(np.float32)
    weight[0] = (np.arange(dim) % 8) * 2 + 1
    weight[0, :2] = 0, 30
    weight[1] = (np.arange(dim) % 8) * 2 + 1
    weight[1, :2] = 0, 510
    weight[2] = 0.5
    weight[3] = 0.0
    weight[4] = 0.25 + rng.uniform(0, 1e-6, dim).astype(np.float32)
    return weight


@pytest.mark.parametrize("bits", [8, 4])
def test_codes_and_round_trip_match_torch_prepack(bits, rng):
    """Codes, scales and biases byte for byte: torch rounds half to even on
    (x - min) * (255 / (max - min + 1e-8)) at 8 bits, on (x - fp16(min)) / scale with a
    float16 scale (1 for a constant row) at 4 bits."""
    torch = pytest.importorskip("torch")
    weight = np.concatenate([awkward_table(rng), table(rng, rows=200, dim=16)])
    prepack = getattr(
        torch.ops.quantized,
        "embedding_bag_byte_prepack" if bits == 8 else "embedding_bag_4bit_prepack",
    )
    packed = prepack(torch.from_numpy(weight)).numpy()
    ours = nbbag.quantize_rows(weight, bits=bits)
    np.testing.assert_array_equal(ours.to_torch_prepacked(), packed)
    loaded = nbbag.QuantizedTable.from_torch_prepacked(torch.from_numpy(packed), bits)
    np.testing.assert_array_equal(loaded.data, ours.data)
    np.testing.assert_array_equal(loaded.to_torch_prepacked(), packed)
    tie_row = 0 if bits == 4 else 1  # (x - min) / scale = 2.5, 3.5, 4.5, 5.5
    assert ours.codes()[tie_row, 2:6].tolist() == [2, 4, 4, 6]
    step = ours.scale[:, None] / 2 + 1e-6  # rounding to the nearest code
    assert (np.abs(ours.dequantize() - weight) <= step).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_torchs_quantized_ops_ignore_mode(bits, rng):
    """Why only sum is compared with torch's ops: torch 2.13's take ``mode`` but always
    sum (modes 1 and 2 give mode 0's answer).  If this fails, torch has fixed it: then
    compare mean and max with its ops too."""
    torch = pytest.importorskip("torch")
    packed = torch.from_numpy(
        nbbag.quantize_rows(table(rng), bits=bits).to_torch_prepacked()
    )
    op = getattr(
        torch.ops.quantized,
        "embedding_bag_byte_rowwise_offsets"
        if bits == 8
        else "embedding_bag_4bit_rowwise_offsets",
    )
    ids, offsets = torch.from_numpy(rng.integers(0, 30, 40)), torch.tensor([0, 9, 25])
    sums = op(packed, ids, offsets, mode=0)
    for mode in (1, 2):
        assert torch.equal(op(packed, ids, offsets, mode=mode), sums)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("weighted, dim", [(False, 16), (True, 16), (True, 64)])
def test_sum_equals_torchs_quantized_op(bits, weighted, dim, rng):
    """torch 2.13's byte and 4-bit ops compute the sum whatever their ``mode`` (mean
    and max give the sum there, measured), so sum is what is compared with them; the
    other modes are compared with the float forward above.  D = 64: the 4-bit rows
    read in vectors (an even number of 16-column lanes); D = 16: one lane, a loop."""
    torch = pytest.importorskip("torch")
    weight = table(rng, rows=50, dim=dim)
    packed = nbbag.quantize_rows(weight, bits=bits).to_torch_prepacked()
    q = nbbag.QuantizedTable.from_torch_prepacked(packed, bits=bits)
    ids = rng.integers(0, 50, 300)
    ids[100:250] = 7  # a hot row
    offsets = np.array([0, 3, 3, 100, 250, 299])
    weights = rng.uniform(0.1, 2, ids.shape).astype(np.float32) if weighted else None
    op = getattr(
        torch.ops.quantized,
        "embedding_bag_byte_rowwise_offsets"
        if bits == 8
        else "embedding_bag_4bit_rowwise_offsets",
    )
    expected = op(
        torch.from_numpy(packed), torch.from_numpy(ids), torch.from_numpy(offsets),
        mode=0, per_sample_weights=None if weights is None else torch.from_numpy(weights),
    ).numpy()  # fmt: skip
    out = nbbag.embedding_bag(q, ids, offsets, mode="sum", per_sample_weights=weights)
    assert_close(out, expected, np.float32, 150)


def test_out_buffer_and_padding(backend, rng):
    q = nbbag.quantize_rows(table(rng), bits=8)
    buffer = backend.array(np.full((2, 16), np.nan, np.float32))
    on_backend = q.to_device() if backend.name == "cuda" else q
    out = nbbag.embedding_bag(
        on_backend, [1, 2, 3], [0, 1], mode="mean", padding_idx=1, out=buffer
    )
    assert out is buffer
    with pytest.raises(TypeError, match="QuantizedTable is for inference only"):
        nbbag.embedding_bag_fwd(on_backend, [1, 2, 3], [0, 1])
    out = backend.host(out)
    np.testing.assert_array_equal(out[0], 0)  # only padding: zeros
    np.testing.assert_allclose(out[1], q.dequantize()[[2, 3]].mean(0), atol=1e-6)


def test_bad_input_and_training_are_refused(rng):
    weight = table(rng, dim=5)
    with pytest.raises(ValueError, match="bits must be 8 or 4, got 6"):
        nbbag.quantize_rows(weight, bits=6)
    with pytest.raises(ValueError, match="D must be even, got D = 5"):
        nbbag.quantize_rows(weight, bits=4)
    with pytest.raises(TypeError, match="weight must be a floating-point array"):
        nbbag.quantize_rows(np.ones((3, 4), np.int64))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        nbbag.quantize_rows(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="2-D uint8"):
        nbbag.QuantizedTable.from_torch_prepacked(np.ones((3, 12), np.float32))
    with pytest.raises(ValueError, match="too narrow"):
        nbbag.QuantizedTable.from_torch_prepacked(np.ones((3, 8), np.uint8), bits=8)
    nan_scale = nbbag.quantize_rows(weight).to_torch_prepacked()
    nan_scale[2, 5:9] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    with pytest.raises(ValueError, match="row 2 has a scale or bias that is not finite"):
        nbbag.QuantizedTable.from_torch_prepacked(nan_scale)

    with pytest.raises(ValueError, match="D must be even, got D = 5"):
        nbbag.QuantizedTable(np.zeros((3, 12), np.uint8), bits=4, embedding_dim=5)
    with pytest.raises(ValueError, match=r"data must be a C-contiguous \(V, 16\) uint8"):
        nbbag.QuantizedTable(np.zeros((3, 12), np.uint8), bits=8, embedding_dim=8)

    q = nbbag.quantize_rows(weight)
    with pytest.raises(AttributeError):
        q.num_embeddings = 100  # the forward trusts it
    before = q.data.copy()
    with pytest.raises(IndexError, match=r"indices\[1\] = 30 is outside \[0, 30\)"):
        nbbag.embedding_bag(q, [1, 30], [0, 1])
    with pytest.raises(ValueError, match="offsets"):
        nbbag.embedding_bag(q, [1, 2], [0, 3])
    with pytest.raises(ValueError, match="per_sample_weights is not supported with mode"):
        nbbag.embedding_bag(q, [1, 2], [0, 1], mode="max", per_sample_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="max_norm renorms rows in place"):
        nbbag.embedding_bag(q, [1, 2], [0, 1], max_norm=1.0)
    inference_only = "QuantizedTable is for inference only"
    with pytest.raises(TypeError, match=inference_only):
        nbbag.embedding_bag_fwd(q, [1, 2], [0, 1])
    with pytest.raises(TypeError, match=inference_only):
        nbbag.optim.SGD(q, lr=0.1)
    with pytest.raises(TypeError, match=inference_only):
        nbbag.EmbeddingBag(30, 5, weight=q)
    np.testing.assert_array_equal(q.data, before)
