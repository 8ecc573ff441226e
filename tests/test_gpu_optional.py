"""nbbag without numba-cuda: it imports, and a GPU array gets an error naming the
``cuda`` extra.  Runs whether or not numba-cuda is installed (its absence is faked)."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import nbbag


class ForeignGpuArray:
    """Anything exposing ``__cuda_array_interface__`` (CuPy, a torch CUDA tensor)."""

    def __init__(self, array):
        self.array = array

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.array.shape,
            "typestr": self.array.dtype.str,
            "data": (self.array.ctypes.data, False),
            "version": 3,
        }


def test_gpu_array_without_numba_cuda_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba_cuda", None)  # as if not installed
    weight = ForeignGpuArray(np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ImportError, match=r"'cuda' extra: pip install nbbag\[cuda\]"):
        nbbag.embedding_bag(weight, [0, 1], [0])
    with pytest.raises(ImportError, match="'cuda' extra"):
        nbbag.optim.Adam(weight)
    for name in ("nbbag.kernels.cuda", "nbbag.cuda"):  # imported by other tests?
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError, match="'cuda' extra"):
        importlib.import_module("nbbag.kernels.cuda")


def test_nbbag_imports_without_numba_cuda():
    code = (
        "import sys; sys.modules['numba_cuda'] = None; import nbbag, nbbag.kernels; "
        "assert 'numba.cuda' not in sys.modules and 'nbbag.cuda' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
