"""One seed for every generator a run draws from: Python's, NumPy's and torch's (CPU and CUDA)."""
import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
