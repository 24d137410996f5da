"""PyTorch `.bin` checkpoints: loaded with `weights_only=True` (a pickle that would run code is refused), memory-
mapped where the zip format allows, and described as `TensorInfo`s like a safetensors header."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.sources import TensorInfo
from ..errors import InputError, first_line
from .headers import SUPPORTED

if TYPE_CHECKING:
    import torch

_TORCH_CODES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}


def load_bin(file: Path) -> dict[str, torch.Tensor]:
    """Load a PyTorch `.bin` with `weights_only=True`: a pickle can build tensors but never run code."""
    import torch  # torch loads on first use, not with the package

    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # the legacy (non-zip) format cannot be memory-mapped
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise InputError(
            f"{file}: refused or unreadable PyTorch file ({first_line(err)}); only plain tensors are loaded"
        ) from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(f"{file}: not a state dict of named tensors")
    return state


def read_bin_header(file: Path) -> list[TensorInfo]:
    """Names, dtypes and shapes of a `.bin` (memory-mapped, so no tensor data is read)."""
    state = load_bin(file)
    infos = []
    for name, tensor in state.items():
        code = _TORCH_CODES.get(str(tensor.dtype).removeprefix("torch."))
        if code is None:
            raise InputError(f"{file}: tensor {name!r} has unsupported dtype {tensor.dtype}; {SUPPORTED}")
        infos.append(TensorInfo(name=name, dtype=code, shape=tuple(tensor.shape), file=file))
    return infos
