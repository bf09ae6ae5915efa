"""Test session set-up: one intra-op thread per process, a private folder for TSV line indexes.

The distributed tests start up to four ranks on two cores; single-threaded torch keeps them
from oversubscribing the machine. Set before torch is first imported.
"""

import os
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"
# line indexes of the TSV files the tests write go to a fresh folder, not the user's cache
os.environ["DMT_INDEX_DIR"] = tempfile.mkdtemp(prefix="dmt-test-index-")

import torch  # noqa: E402

torch.set_num_threads(1)
