"""nbbag: EmbeddingBag for NumPy, as Numba kernels.

Look up rows of an embedding table for bags of ids and reduce each bag (sum, mean, max,
sqrtn), with torch.nn.functional.embedding_bag's semantics.
"""

from nbbag.functional import embedding_bag
from nbbag.modes import Mode

__all__ = ["Mode", "embedding_bag"]
__version__ = "0.1.0"
