"""Shared test set-up.

Torch's intra-op thread pool thrashes when the suite shares a small machine with other work
(two threads on two busy cores ran 10-36x slower here), and the tiny tensors of unit tests gain
nothing from it: pin one thread for the whole session.
"""

from __future__ import annotations

import os

import torch

torch.set_num_threads(1)
# Attack batch sizes are measured per machine (advlab.tuning) unless fixed: fix them so the
# suite's random starts fall the same on every machine, and measures nothing it does not test.
os.environ.setdefault("ADVLAB_BATCH_SIZE", "500")
# likewise the CPU convolution backward (advlab.attacks.backward): PyTorch's default, measured
# nowhere but in tests/test_backward.py
os.environ.setdefault("ADVLAB_CPU_BACKWARD", "onednn")
