"""Reading checkpoints: find the weight files, validate every index and header, and serve tensor data.

Everything here treats its input as hostile: an index may name files outside the folder, a header may
lie about offsets, a `.bin` may carry a pickle that runs code. Names, dtypes and shapes come from the
headers alone, so a pair of checkpoints is validated before a byte of tensor data is read. Data is then
served as flat, zero-copy views of memory-mapped files, chunk by chunk.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from ..constants import (
    CONFIG_NAME,
    MISTRAL_INDEX_FILE,
    PYTORCH_INDEX_FILE,
    PYTORCH_WEIGHTS_NAME,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
)
from ..core.sources import FLOAT_DTYPES, OTHER_DTYPES, TensorInfo, itemsize, torch_dtype
from ..errors import InputError, first_line

if TYPE_CHECKING:
    import torch

# Low-precision formats only appear in quantized checkpoints: ExPO on them would be meaningless.
QUANTIZED_DTYPES = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F6_E2M3", "F6_E3M2", "F4"}
# Tensor name endings of the common quantization formats (GPTQ, AWQ, bitsandbytes, FP8 block scales).
QUANTIZED_SUFFIXES = (
    ".qweight",
    ".qzeros",
    ".scales",
    ".g_idx",
    ".SCB",
    ".weight_format",
    ".absmax",
    ".quant_map",
    ".quant_state",
    ".weight_scale",
    ".weight_scale_inv",
    ".input_scale",
)
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces

SUPPORTED = "supported: float32, float16, bfloat16 and float64 weights in safetensors or PyTorch .bin checkpoints"


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
                self._maps[file] = _load_bin(file)

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
        import torch

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
        import torch

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
        raise InputError(f"--{role} {path} is quantized ({method}); {SUPPORTED}: merge the unquantized weights")

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


def read_weights(
    path: Path, files: list[Path], fmt: str, weight_map: dict[str, str] | None, role: str
) -> tuple[dict[str, TensorInfo], dict[Path, int]]:
    """Every tensor's header facts, in file order, checked against the index and each other; and where each
    safetensors file's data section starts."""
    for file in files:
        if not file.is_file():
            raise InputError(f"{file}: listed in the index of --{role} but missing; re-download the checkpoint")
    tensors: dict[str, TensorInfo] = {}
    starts: dict[Path, int] = {}
    for file in files:
        if fmt == "safetensors":
            infos, starts[file] = read_safetensors_header(file)
        else:
            infos = read_bin_header(file)
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


def check_supported(info: TensorInfo) -> None:
    """Refuse quantized tensors: extrapolating packed integers or fp8 codes would be silently wrong."""
    if info.dtype in QUANTIZED_DTYPES or info.name.endswith(QUANTIZED_SUFFIXES):
        raise InputError(
            f"{info.file}: tensor {info.name!r} ({info.dtype}) is quantized; {SUPPORTED}: "
            "merge the unquantized weights"
        )


def read_config(path: Path, role: str) -> dict[str, Any]:
    file = path / CONFIG_NAME
    if not file.is_file():
        raise InputError(f"--{role} {path}: no {CONFIG_NAME}; a transformers checkpoint folder needs one")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise InputError(f"{file}: expected a JSON object")
    return config


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice")
        result[key] = value
    return result


def is_plain_filename(name: str) -> bool:
    """True for a bare file name: no folder part, no drive, no `..` (checked for both path flavours)."""
    if not name or name in {".", ".."} or "\x00" in name:
        return False
    return all(
        len(flavour(name).parts) == 1 and flavour(name).name == name for flavour in (PurePosixPath, PureWindowsPath)
    )


def read_index(file: Path, extension: str) -> dict[str, str]:
    """Parse a `*.index.json` into its weight_map, refusing anything that could escape the folder."""
    try:
        index = json.loads(file.read_text(encoding="utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{file}: not a valid index ({err}); re-download the checkpoint") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{file}: no 'weight_map' object; re-download the checkpoint")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not is_plain_filename(shard) or not shard.endswith(extension):
            raise InputError(
                f"{file}: tensor {tensor!r} points to {shard!r}, which is not a plain {extension} file name "
                "in the folder; refusing a hostile or corrupt index"
            )
    return weight_map


def read_safetensors_header(file: Path) -> tuple[list[TensorInfo], int]:
    """Parse and validate a safetensors header; return its tensors in data order and where its data starts."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise InputError(f"{file}: truncated (only {size} bytes); re-download it")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise InputError(
                f"{file}: header length {header_len} exceeds the file ({size} bytes); truncated or corrupt"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{file}: header is not valid JSON ({err}); the file is corrupt") from err
    if not isinstance(header, dict):
        raise InputError(f"{file}: header is not a JSON object; the file is corrupt")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    data_size = size - data_start
    infos = []
    for name, entry in header.items():
        infos.append(parse_entry(file, name, entry))
    infos.sort(key=lambda info: info.offset)
    end = 0
    for info in infos:
        if info.offset < end:
            raise InputError(f"{file}: tensor {info.name!r} overlaps the previous tensor; the file is corrupt")
        end = info.offset + info.nbytes
    if end > data_size:
        raise InputError(
            f"{file}: truncated: its header needs {end} data bytes, the file has {data_size}; re-download it"
        )
    _second_opinion(file)
    return infos, data_start


def _second_opinion(file: Path) -> None:
    """Let the safetensors library validate the file too: it is the reference reader of the format."""
    from safetensors import safe_open

    try:
        with safe_open(file, framework="pt"):
            pass
    except Exception as err:  # SafetensorError and friends: any refusal means the file is unusable
        raise InputError(f"{file}: rejected by safetensors ({err}); the file is corrupt") from err


def parse_entry(file: Path, name: str, entry: Any) -> TensorInfo:
    """One header entry, validated; its offset relative to the data section, as the header gives it."""

    def bad(what: str) -> InputError:
        return InputError(f"{file}: tensor {name!r}: {what}; the file is corrupt")

    if not isinstance(entry, dict):
        raise bad("entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad("no dtype")
    if dtype not in FLOAT_DTYPES and dtype not in OTHER_DTYPES and dtype not in QUANTIZED_DTYPES:
        raise InputError(f"{file}: tensor {name!r} has unknown dtype {dtype!r}; {SUPPORTED}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise bad(f"data_offsets {offsets!r} are not [begin, end]")
    info = TensorInfo(name=name, dtype=dtype, shape=tuple(shape), file=file, offset=offsets[0])
    if dtype in QUANTIZED_DTYPES:
        check_supported(info)
    if offsets[1] - offsets[0] != info.nbytes:
        raise bad(f"data_offsets span {offsets[1] - offsets[0]} bytes but {dtype}{list(shape)} needs {info.nbytes}")
    return info


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


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    """Load a PyTorch `.bin` with `weights_only=True`: a pickle can build tensors but never run code."""
    import pickle
    import zipfile

    import torch

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
    state = _load_bin(file)
    infos = []
    for name, tensor in state.items():
        code = _TORCH_CODES.get(str(tensor.dtype).removeprefix("torch."))
        if code is None:
            raise InputError(f"{file}: tensor {name!r} has unsupported dtype {tensor.dtype}; {SUPPORTED}")
        infos.append(TensorInfo(name=name, dtype=code, shape=tuple(tensor.shape), file=file))
    return infos
