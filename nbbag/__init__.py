"""nbbag: EmbeddingBag for NumPy, as Numba kernels.

Look up rows of an embedding table for bags of ids and reduce each bag (sum, mean, max,
sqrtn), with torch.nn.functional.embedding_bag's semantics, and get row-sparse
gradients back.
"""

from nbbag import (
    _cache,  # noqa: F401  (before any kernel is defined: see its docstring)
    _notice,  # noqa: F401  (a line on stderr at the first compile)
    _threads,  # noqa: F401  (before any kernel runs: picks the threading layer)
    optim,
)
from nbbag.base.records import BagContext
from nbbag.cached import CachedEmbeddingBag
from nbbag.collection import EmbeddingBagCollection, TableConfig
from nbbag.functional import embedding_bag, embedding_bag_bwd, embedding_bag_fwd
from nbbag.layer import EmbeddingBag
from nbbag.modes import Mode
from nbbag.quantized import QuantizedTable, quantize_rows
from nbbag.sparse import RowSparseGrad

__all__ = [
    "BagContext",
    "CachedEmbeddingBag",
    "EmbeddingBag",
    "EmbeddingBagCollection",
    "Mode",
    "QuantizedTable",
    "RowSparseGrad",
    "TableConfig",
    "embedding_bag",
    "embedding_bag_bwd",
    "embedding_bag_fwd",
    "optim",
    "quantize_rows",
]
__version__ = "0.1.0"
