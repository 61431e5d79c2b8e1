"""Test-wide set-up: CPU accelerator, one thread per process, project root importable."""

import os
import sys

os.environ.setdefault("ZEROSPEED_ACCELERATOR", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(1)
