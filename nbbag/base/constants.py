"""Constants that kernels, validation and the front all use: each is defined here once."""

import numpy as np

NO_PADDING = -1  # padding_idx of a forward without padding: no row is ever -1

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))

# Status of a forward kernel that checks its inputs as it reads them: OK, or
# BAD_OFFSETS, or else the position of the first id outside [0, V).
OK = -1
BAD_OFFSETS = -2
BAD_ID = -3  # a collection's kernel: an id outside its table (the host finds which)
