"""Reading checkpoints: find the weight files, validate every index and header, and serve tensor data.

Everything here treats its input as hostile: an index may name files outside the folder, a header may
lie about offsets, a `.bin` may carry a pickle that runs code. Names, dtypes and shapes come from the
headers alone, so a pair of checkpoints is validated before a byte of tensor data is read. Data is then
served as flat, zero-copy views of memory-mapped files, chunk by chunk.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..constants import (
    MISTRAL_INDEX_FILE,
    PYTORCH_INDEX_FILE,
    PYTORCH_WEIGHTS_NAME,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
)
from ..core.sources import TensorInfo, itemsize, torch_dtype
from ..errors import InputError
from .headers import SUPPORTED, check_supported, read_config, read_index, read_safetensors_header
from .pytorch_bin import load_bin, read_bin_header

if TYPE_CHECKING:
    import torch


@dataclass
class Checkpoint:
    """A local checkpoint folder, a `TensorSource`: its config, the header facts of every tensor in file order,
    and its data served from memory-mapped files."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    format: str  # "safetensors" or "bin"
    weight_files: list[Path]
    data_starts: dict[Path, int] = field(default_factory=dict)  # where each safetensors file's data section starts
    _maps: dict[Path, Any] = field(default_factory=dict, repr=False)

    @property
    def readable(self) -> bool:
        return True

    def open(self) -> None:
        """Map every weight file into memory (no data is read until it is touched)."""
        for file in self.weight_files:
            if file in self._maps:
                continue
            if self.format == "safetensors":
                with open(file, "rb") as fh:
                    # ACCESS_COPY: a private mapping is writable, so torch can wrap it without a warning;
                    # nothing ever writes to it, so its pages stay the page cache's (no anonymous memory).
                    self._maps[file] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
            else:
                self._maps[file] = load_bin(file)

    def close(self) -> None:
        for mapped in self._maps.values():
            if isinstance(mapped, mmap.mmap):
                try:
                    mapped.close()
                except BufferError:  # a view is still alive somewhere: the GC closes it later
                    pass
        self._maps.clear()

    def __enter__(self) -> Checkpoint:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of a tensor, flattened, as a zero-copy view where possible."""
        import torch  # torch loads on first use, not with the package

        mapped = self._maps[info.file]
        if self.format == "safetensors":
            size = itemsize(info.dtype)
            begin = self.data_starts[info.file] + info.offset + start * size
            if info.is_float:
                return torch.frombuffer(mapped, dtype=torch_dtype(info.dtype), count=stop - start, offset=begin)
            return torch.frombuffer(mapped, dtype=torch.uint8, count=(stop - start) * size, offset=begin)
        tensor = mapped[info.name].reshape(-1)[start:stop]
        return tensor if info.is_float else tensor.contiguous().view(torch.uint8)

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        """The bytes of elements [start, stop) of a tensor, for copying unchanged."""
        size = itemsize(info.dtype)
        if self.format == "safetensors":
            begin = self.data_starts[info.file] + info.offset
            return memoryview(self._maps[info.file])[begin + start * size : begin + stop * size]
        import torch  # torch loads on first use, not with the package

        tensor = self._maps[info.file][info.name].reshape(-1)[start:stop].contiguous()
        return memoryview(tensor.view(torch.uint8).numpy())

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Ask the kernel to start reading a range now, so it is in memory when we need it."""
        mapped = self._maps.get(info.file)
        if not isinstance(mapped, mmap.mmap) or not hasattr(mapped, "madvise"):
            return
        size = itemsize(info.dtype)
        begin = self.data_starts[info.file] + info.offset + start * size
        aligned = begin - begin % mmap.PAGESIZE
        length = begin + (stop - start) * size - aligned
        if length > 0:
            try:
                mapped.madvise(mmap.MADV_WILLNEED, aligned, length)
            except (OSError, ValueError):  # advice only
                pass


def load_checkpoint(path: Path, role: str) -> Checkpoint:
    """Read a checkpoint folder's config and weight headers, validating everything, reading no tensor data.

    Args:
        path: the folder.
        role: "sft" or "aligned", used in messages.

    Raises:
        InputError: missing folder or files, corrupt or hostile index/header, unsupported format.
    """
    if not path.exists():
        raise InputError(f"--{role} {path}: no such folder; pass a local checkpoint folder")
    if not path.is_dir():
        raise InputError(f"--{role} {path}: not a folder; pass the checkpoint folder, not a file in it")
    config = read_config(path, role)
    if "quantization_config" in config:
        method = (
            config["quantization_config"].get("quant_method", "?")
            if isinstance(config["quantization_config"], dict)
            else "?"
        )
        qlora = "; a QLoRA adapter updates unquantized weights: pass --sft (or --base) <the unquantized base>"
        raise InputError(
            f"--{role} {path} is quantized ({method}); {SUPPORTED}: merge the unquantized weights"
            + (qlora if role in ("sft", "base") else "")
        )

    fmt, weight_map = _find_weights(path, role)
    files = (
        sorted({path / name for name in weight_map.values()})
        if weight_map is not None
        else [path / (SAFETENSORS_SINGLE_FILE if fmt == "safetensors" else PYTORCH_WEIGHTS_NAME)]
    )
    tensors, starts = read_weights(path, files, fmt, weight_map, role)
    return Checkpoint(path, config, tensors, format=fmt, weight_files=files, data_starts=starts)


def load_consolidated(path: Path, role: str) -> Checkpoint:
    """The Mistral-format weights of a folder (`consolidated*.safetensors`, indexed or not), validated alike."""
    index = path / MISTRAL_INDEX_FILE
    weight_map = read_index(index, ".safetensors") if index.is_file() else None
    files = (
        sorted({path / name for name in weight_map.values()})
        if weight_map
        else sorted(path.glob("consolidated*.safetensors"))
    )
    if not files:
        raise InputError(f"--{role} {path}: no consolidated*.safetensors; --mistral-format needs them on both sides")
    tensors, starts = read_weights(path, files, "safetensors", weight_map, role)
    return Checkpoint(path, {}, tensors, format="safetensors", weight_files=files, data_starts=starts)


HeaderReader = Callable[[Path], tuple[list[TensorInfo], int]]


def read_weights(
    path: Path,
    files: list[Path],
    fmt: str,
    weight_map: dict[str, str] | None,
    role: str,
    read_header: HeaderReader | None = None,
) -> tuple[dict[str, TensorInfo], dict[Path, int]]:
    """Every tensor's header facts, in file order, checked against the index and each other; and where each
    safetensors file's data section starts. `read_header` reads one file's header (a Hub repo's over the network);
    by default the local files are read, and must exist."""
    if read_header is None:
        for file in files:
            if not file.is_file():
                raise missing_shard(file, role)
        read_header = read_safetensors_header if fmt == "safetensors" else _bin_header
    tensors: dict[str, TensorInfo] = {}
    starts: dict[Path, int] = {}
    for file in files:
        infos, starts[file] = read_header(file)
        for info in infos:
            if info.name in tensors:
                raise InputError(f"{file}: tensor {info.name!r} is also stored in {tensors[info.name].file.name}")
            if weight_map is not None and weight_map.get(info.name) != file.name:
                raise InputError(
                    f"{file}: holds tensor {info.name!r} but the index lists it in "
                    f"{weight_map.get(info.name, 'no file')}; the index and the shards disagree"
                )
            check_supported(info)
            tensors[info.name] = info
    if weight_map is not None:
        missing = [name for name in weight_map if name not in tensors]
        if missing:
            raise InputError(
                f"{path}: the index lists {missing[0]!r} in {weight_map[missing[0]]} but that file does not hold it"
                f"{f' (+{len(missing) - 1} more)' if len(missing) > 1 else ''}; the index and the shards disagree"
            )
    return tensors, starts


def missing_shard(file: Path, role: str) -> InputError:
    """A shard the index names that the folder or repo does not hold: the same words for both."""
    return InputError(f"{file}: listed in the index of --{role} but missing; the checkpoint is incomplete")


def _bin_header(file: Path) -> tuple[list[TensorInfo], int]:
    return read_bin_header(file), 0  # a .bin has no data section at a fixed offset


# Where transformers looks for weights, in its order: (file, format, True for an index).
WEIGHT_LAYOUTS = (
    (SAFETENSORS_SINGLE_FILE, "safetensors", False),
    (SAFETENSORS_INDEX_FILE, "safetensors", True),
    (PYTORCH_WEIGHTS_NAME, "bin", False),
    (PYTORCH_INDEX_FILE, "bin", True),
)


def _find_weights(path: Path, role: str) -> tuple[str, dict[str, str] | None]:
    """The weight format of a folder, and its validated weight_map when sharded."""
    for name, fmt, is_index in WEIGHT_LAYOUTS:
        if (path / name).is_file():
            return fmt, read_index(path / name, f".{fmt}") if is_index else None
    expected = ", ".join(name for name, _, _ in WEIGHT_LAYOUTS)
    raise InputError(f"--{role} {path}: no weights found; expected one of {expected}")
