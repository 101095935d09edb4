"""Test session setup. Without CUDA, Triton kernels run in Triton's interpreter on CPU tensors; Triton reads
``TRITON_INTERPRET`` when it is first imported, so it is set here, before any test imports it."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # pytest -n: the workers share the cores
