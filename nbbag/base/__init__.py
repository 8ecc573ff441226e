"""Backend-neutral pieces, below both backends: constants, the records the pipelines
hand on, and the math that the CPU and the GPU kernels share.

Nothing here imports a backend (``nbbag.cpu``, ``nbbag.cuda``) or the front
(``nbbag.functional``, ``nbbag.layer``, ``nbbag.optim``).
"""
