import os

# Multi-process tests and the interpreter are slow enough on 2 cores without thread oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton kernels (tests/test_kernels_triton.py) run under the Triton interpreter on machines without a GPU.
# The choice must be made before anything imports triton (test_flops.py already does, through
# torch.utils.flop_counter, at collection time), because triton fixes it when its modules are imported.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
