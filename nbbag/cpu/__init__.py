"""CPU kernels: ``@njit(parallel=True)``, compiled on first use and cached on disk."""
