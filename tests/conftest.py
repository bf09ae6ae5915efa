"""Test session set-up: one intra-op thread per process.

The distributed tests start up to four ranks on two cores; single-threaded torch keeps them
from oversubscribing the machine. Set before torch is first imported.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
