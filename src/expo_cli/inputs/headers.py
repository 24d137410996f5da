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
