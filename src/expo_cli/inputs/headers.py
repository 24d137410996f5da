"""Untrusted metadata, validated before any tensor data is read: safetensors headers, weight indexes, configs.

An index may name files outside the folder, a header may lie about offsets or overlap tensors, a config may
repeat a key: each is refused with one line naming the file. Names, dtypes and shapes come from the headers alone,
so a pair of checkpoints is validated before a byte of tensor data is read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from safetensors import safe_open

from ..constants import CONFIG_NAME
from ..core.sources import FLOAT_DTYPES, OTHER_DTYPES, TensorInfo
from ..errors import InputError

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
    check_size(file, file.stat().st_size, MAX_CONFIG_BYTES)
    return parse_config(file, file.read_bytes())


def parse_config(file: Path, raw: bytes) -> dict[str, Any]:
    """A config.json's object, from its bytes (a local file's or a Hub repo's)."""
    try:
        config = json.loads(raw.decode("utf-8"))
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


MAX_CONFIG_BYTES = 16 * 2**20  # config.json (a real one is a few kB; a 400 MB one is an attack on memory)
MAX_INDEX_BYTES = 64 * 2**20  # a weight index (DeepSeek-V3's, ~90k tensors, is ~9 MB)
MAX_SHARDS = 10_000  # files one index may name (a 405B model has ~200)


def check_size(file: Path, size: int, limit: int) -> None:
    """A config or index no larger than its limit (read whole into memory), local or listed by the Hub."""
    if size > limit:
        raise InputError(f"{file}: {size} bytes, more than such a file may be ({limit}); refusing it")


def read_index(file: Path, extension: str) -> dict[str, str]:
    """Parse a local `*.index.json` into its weight_map, refusing anything that could escape the folder."""
    check_size(file, file.stat().st_size, MAX_INDEX_BYTES)
    return parse_index(file, file.read_bytes(), extension)


def parse_index(file: Path, raw: bytes, extension: str) -> dict[str, str]:
    """An index's weight_map, from its bytes (a local file's or a Hub repo's): every shard a plain `extension`
    file name in the same folder or repo (no folder part, no `..`, no absolute path), at most MAX_SHARDS of them."""
    try:
        index = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
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
    if len(set(weight_map.values())) > MAX_SHARDS:
        raise InputError(f"{file}: names {len(set(weight_map.values()))} files, more than {MAX_SHARDS}; refusing it")
    return weight_map


def read_safetensors_header(file: Path) -> tuple[list[TensorInfo], int]:
    """Parse and validate a local safetensors header; return its tensors in data order and where its data starts."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        length = header_length(file, fh.read(8), size)
        raw = fh.read(length)
    infos = parse_safetensors_header(file, raw, size)
    _second_opinion(file)
    return infos, 8 + length


def header_length(file: Path, prefix: bytes, size: int) -> int:
    """The header length the first 8 bytes of a safetensors file of `size` bytes announce, checked against it."""
    if len(prefix) < 8:
        raise InputError(f"{file}: truncated (only {size} bytes); re-download it")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(size - 8, MAX_HEADER_BYTES):
        raise InputError(f"{file}: header length {length} exceeds the file ({size} bytes); truncated or corrupt")
    return length


def parse_safetensors_header(file: Path, raw: bytes, size: int) -> list[TensorInfo]:
    """A safetensors header's tensors in data order, from its bytes and the file's size (a local file's or a Hub
    repo's: both pass the same checks): valid JSON without repeated keys, known dtypes, offsets that agree with the
    shapes, no two tensors overlapping, every tensor inside the file."""
    try:
        header = json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{file}: header is not valid JSON ({err}); the file is corrupt") from err
    if not isinstance(header, dict):
        raise InputError(f"{file}: header is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(f"{file}: __metadata__ is not an object of strings; the file is corrupt")
    data_size = size - 8 - len(raw)
    infos = [parse_entry(file, name, entry) for name, entry in header.items()]
    infos.sort(key=lambda info: (info.offset, info.nbytes))
    end = 0
    for info in infos:  # as the safetensors library requires: back to back from 0, covering the data exactly
        if info.offset < end:
            raise InputError(f"{file}: tensor {info.name!r} overlaps the previous tensor; the file is corrupt")
        if info.offset > end:
            raise InputError(f"{file}: tensor {info.name!r} leaves a gap before it; the file is corrupt")
        end = info.offset + info.nbytes
    if end > data_size:
        raise InputError(
            f"{file}: truncated: its header needs {end} data bytes, the file has {data_size}; re-download it"
        )
    if end < data_size:
        raise InputError(f"{file}: {data_size - end} bytes after its last tensor; the file is corrupt")
    return infos


def _second_opinion(file: Path) -> None:
    """Let the safetensors library validate the file too: it is the reference reader of the format (opened for
    numpy, which reads no tensor here: validating headers does not wait for torch to import)."""
    try:
        with safe_open(file, framework="numpy"):
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
