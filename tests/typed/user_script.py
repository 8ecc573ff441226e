"""A user's typed script: mypy must accept it as it is (tests/test_typing.py)."""

import numpy as np
import numpy.typing as npt
import scipy.sparse

import nbbag

weight: npt.NDArray[np.float32] = np.zeros((10, 4), np.float32)
out: np.ndarray = nbbag.embedding_bag(weight, [1, 2, 3], [0, 2], mode="sum")
out, ctx = nbbag.embedding_bag_fwd(
    weight, np.array([1, 2, 3]), [0, 2], mode=nbbag.Mode.MEAN
)
grad: nbbag.RowSparseGrad = nbbag.embedding_bag_bwd(np.ones_like(out), ctx)
csr: scipy.sparse.csr_array | scipy.sparse.coo_array = grad.to_scipy()
rows: np.ndarray = grad.rows
grad, weights_grad = nbbag.embedding_bag_bwd(
    np.ones_like(out), ctx, per_sample_weights_grad=True
)
weights_grad.sum()

bag = nbbag.EmbeddingBag(10, 4, mode="sum", seed=0)
bag_out: np.ndarray = bag([1, 2, 3], [0, 2])
bag.backward(np.ones_like(bag_out)).to_scipy()
bag_grad, bag_weights_grad = bag.backward(
    np.ones_like(bag_out), per_sample_weights_grad=True
)

optimizer = nbbag.optim.SGD(weight, lr=0.1, momentum=0.9)
optimizer.step(grad)
optimizer.lr = 0.05
state: dict = optimizer.state_dict()
optimizer.load_state_dict(state)
adam = nbbag.optim.Adam(weight, lr=1e-3, betas=(0.9, 0.999))
adam.step_fused(np.ones_like(out), ctx)
