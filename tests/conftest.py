"""Test session set-up.

The distributed tests fork ranks from this process. A fork of a process whose OpenMP pool already
has worker threads can hang in the child (libgomp is not fork-safe), so the whole session runs
torch with one intra-op thread, set before torch is first imported.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
