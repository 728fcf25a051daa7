"""The one device vocabulary of the project: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Every stage and command (detector, detect, train, evaluate, generate, project, serve) names its device
this way and resolves it here, so a device that is not there stops at once with the same message,
before any long work starts. Only resolve_device imports torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto | cpu | cuda | cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class DeviceError(ValueError):
    """A device name that is malformed or names a device this machine does not have."""


def is_device_name(name: str) -> bool:
    """True for the names this project accepts (the syntax only; see resolve_device for presence)."""
    return bool(_DEVICE.match(name))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for `name`: auto -> CUDA when present, else CPU; cuda -> this rank's GPU.

    Raises DeviceError when the name is malformed or the GPU it asks for is not there.
    """
    import torch  # here, not at the top: params.py checks device names without paying for torch

    if not is_device_name(name):
        raise DeviceError(f"device {name!r}: use {DEVICE_HELP}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r}: torch sees no CUDA device on this machine; use cpu or auto")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)
