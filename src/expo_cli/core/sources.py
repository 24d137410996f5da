"""Where tensors come from: the interface every reader implements, and the vocabulary they share.

A source gives the facts of its tensors from headers alone (`config`, `tensors`), so a pair can be validated and
planned before any data is read; then data by block: `flat` (values, zero-copy where it can), `raw` (bytes, for
tensors copied unchanged) and `prefetch` (a hint to read ahead). Local safetensors and `.bin` folders
(`checkpoint.Checkpoint`) and Hub repos known by their headers (`hub.RemoteCheckpoint`, data-less until
downloaded) implement it; a LoRA adapter (θ_sft + s·B·A per row block) or a ranged Hub reader drop in the same way.

One offset convention everywhere: `TensorInfo.offset` is the byte offset of a tensor's data from the start of its
file's data section (after the 8-byte header length and the JSON header), exactly as safetensors' `data_offsets`
say; each source knows where its files' data sections start.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

# safetensors dtype code -> bytes per element: the floating ones are extrapolated, the others copied
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
OTHER_DTYPES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


def itemsize(code: str) -> int:
    return FLOAT_DTYPES.get(code) or OTHER_DTYPES[code]


# The one table of floating dtypes: safetensors code -> the name torch and transformers' config.json use.
FLOAT_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# ... and of the others (copied unchanged).
OTHER_NAMES = {code: code.lower().replace("i", "int").replace("u", "uint") for code in OTHER_DTYPES} | {"BOOL": "bool"}


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The widening rule of all arithmetic on tensors: float64 when any side is float64, else float32."""
    import torch  # torch loads on first use, not with the package

    return torch.float64 if torch.float64 in dtypes else torch.float32


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code."""
    import torch  # torch loads on first use, not with the package

    return getattr(torch, FLOAT_NAMES.get(code) or OTHER_NAMES[code])


def rounded_bytes(values: torch.Tensor, code: str) -> memoryview:
    """Computed values rounded once to a safetensors dtype, as bytes: `raw` of a source that computes its tensors."""
    import torch  # torch loads on first use, not with the package

    return memoryview(values.to(torch_dtype(code)).contiguous().view(torch.uint8).numpy())


def dtype_name(code: str) -> str:
    """The name transformers writes in config.json for a safetensors dtype code."""
    return FLOAT_NAMES.get(code, code.lower())


DTYPE_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
}  # the short names other tools accept


def canonical_dtype(name: str | None) -> str | None:
    """A --dtype value in its long name (bf16 -> bfloat16); unknown names are left for `dtype_code` to refuse."""
    return None if name is None else DTYPE_ALIASES.get(name.lower(), name)


def dtype_code(name: str | None) -> str | None:
    """The safetensors code of a --dtype value (None: keep each aligned dtype)."""
    if name is None:
        return None
    codes = {FLOAT_NAMES[code]: code for code in ("BF16", "F16", "F32")}
    name = canonical_dtype(name)
    if name not in codes:
        raise UsageError(f"--dtype {name!r}: choose one of {', '.join(codes)} (or bf16, fp16, fp32)")
    return codes[name]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its file's header declares it."""

    name: str
    dtype: str  # safetensors code: "BF16", "F32", "I64", ...
    shape: tuple[int, ...]
    file: Path  # the file holding it (for a Hub repo: `org/name/<file>`)
    offset: int = 0  # bytes from the start of the file's data section (safetensors only)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def row_numel(self) -> int:
        """Elements per row (along the first dimension); 1 for scalars and vectors."""
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1


class TensorSource(Protocol):
    """A checkpoint's tensors: facts from headers first, then data block by block."""

    path: Path  # the folder (for a Hub repo not yet downloaded: `org/name`)
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]  # in the order the data is stored

    @property
    def readable(self) -> bool:
        """False for a header-only view (a Hub repo validated but not downloaded)."""

    def __enter__(self) -> TensorSource: ...

    def __exit__(self, *exc: object) -> None: ...

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of a tensor, flattened (floating values, or bytes for other dtypes)."""

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        """The bytes of elements [start, stop), for copying a tensor unchanged."""

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Start reading elements [start, stop) now; a hint, never an error."""


def layout_sha256(tensors: dict[str, TensorInfo]) -> str:
    """A digest of the tensor names, dtypes, shapes and files: names an input in the provenance without a local
    path and without reading its data."""
    entries = sorted((t.name, t.dtype, list(t.shape), t.file.name) for t in tensors.values())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def blocks(numel: int, row_numel: int, limit: int) -> Iterator[tuple[int, int]]:
    """[start, stop) element ranges covering a tensor, each whole rows of at most `limit` elements.

    Row blocks let a source compute a block from row-indexed factors (a LoRA B·A) and keep grown-vocabulary rows
    apart; a single row longer than `limit` is split into element ranges, so memory stays bounded.
    """
    step = max(1, limit // row_numel) * row_numel if row_numel <= limit else limit
    for start in range(0, numel, step):
        yield start, min(start + step, numel)
