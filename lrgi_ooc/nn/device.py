"""Which torch device a stage runs on: one rule for train, embed and evaluate."""
from __future__ import annotations

import os
from typing import Any

from lrgi_ooc.base.errors import InputError


def torch_device(name: str) -> Any:
    """`auto` -> CUDA when torch sees a GPU, else CPU; a CUDA name without CUDA is an error."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def device_name(name: str) -> str:
    """The device as a string, without importing torch when there is no NVIDIA driver
    (so that numpy-only stages such as embed stay torch-free on CPU machines)."""
    if name == "cpu":
        return "cpu"
    if name == "auto" and not os.path.exists("/proc/driver/nvidia/version"):
        return "cpu"
    return str(torch_device(name))
