"""Corrupt and hostile inputs: each gets one clear error and exit code 3, no output, inputs unchanged."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from helpers import run_failing


def raw_safetensors(path: Path, header: dict, data: bytes, length: int | None = None) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)


def pair_with(tmp_path: Path, llama_pair, header: dict, data: bytes, **kwargs) -> tuple[Path, Path]:
    """A copy of the pair whose SFT weights are replaced by a hand-made safetensors file."""
    sft, aligned = (shutil.copytree(p, tmp_path / p.name) for p in llama_pair)
    raw_safetensors(sft / "model.safetensors", header, data, **kwargs)
    return sft, aligned


GOOD = {"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (GOOD, b"\0" * 16, 10**9, "header length 1000000000 exceeds the file"),
        (GOOD, b"\0" * 8, None, "truncated: its header needs 16 data bytes, the file has 8"),
        (
            {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}},
            b"\0" * 16,
            None,
            "data_offsets span 12 bytes but F32[2, 2] needs 16",
        ),
        (
            {
                "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 16,
            None,
            "overlaps",
        ),
        ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, None, "unknown dtype 'Q4'"),
        ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, None, "is quantized"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", None, "not a list of non-negative"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, b"\0" * 8, None, "are not [begin, end]"),
        ({"w": [1, 2]}, b"", None, "entry is not an object"),
        ([1, 2], b"", None, "header is not a JSON object"),
    ],
)
def test_bad_safetensors_headers(tmp_path, expo, llama_pair, header, data, length, message):
    sft, aligned = pair_with(tmp_path, llama_pair, header, data, length=length)
    error = run_failing(expo, tmp_path, sft, aligned, code=3)
    assert str(sft / "model.safetensors") in error and message in error


def test_duplicate_tensor_names(tmp_path, expo, llama_pair):
    sft, aligned = (shutil.copytree(p, tmp_path / p.name) for p in llama_pair)
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    encoded = f'{{"w": {entry}, "w": {entry}}}'.encode()
    (sft / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * 4)
    error = run_failing(expo, tmp_path, sft, aligned, code=3)
    assert "key 'w' appears twice" in error


def index_pair(tmp_path: Path, llama_pair) -> tuple[Path, Path, Path, dict]:
    sft, aligned = (shutil.copytree(p, tmp_path / p.name) for p in llama_pair)
    index_file = aligned / "model.safetensors.index.json"
    return sft, aligned, index_file, json.loads(index_file.read_text())


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ("../sft/model.safetensors", "not a plain .safetensors file name"),
        ("/etc/passwd.safetensors", "not a plain .safetensors file name"),
        ("sub/model.safetensors", "not a plain .safetensors file name"),
        ("..\\model.safetensors", "not a plain .safetensors file name"),
        ("model.bin", "not a plain .safetensors file name"),
        ("model-99999-of-99999.safetensors", "listed in the index of --aligned but missing"),
    ],
)
def test_hostile_index_entries(tmp_path, expo, llama_pair, shard, message):
    sft, aligned, index_file, index = index_pair(tmp_path, llama_pair)
    index["weight_map"][next(iter(index["weight_map"]))] = shard
    index_file.write_text(json.dumps(index))
    error = run_failing(expo, tmp_path, sft, aligned, code=3)
    assert message in error


def test_index_not_json(tmp_path, expo, llama_pair):
    sft, aligned, index_file, _ = index_pair(tmp_path, llama_pair)
    index_file.write_text("{not json")
    assert "not a valid index" in run_failing(expo, tmp_path, sft, aligned, code=3)


def test_index_without_weight_map(tmp_path, expo, llama_pair):
    sft, aligned, index_file, _ = index_pair(tmp_path, llama_pair)
    index_file.write_text('{"metadata": {}}')
    assert "no 'weight_map' object" in run_failing(expo, tmp_path, sft, aligned, code=3)


def test_index_listing_a_tensor_twice(tmp_path, expo, llama_pair):
    sft, aligned, index_file, index = index_pair(tmp_path, llama_pair)
    name, shard = next(iter(index["weight_map"].items()))
    text = json.dumps(index)
    index_file.write_text(text.replace('"weight_map": {', f'"weight_map": {{"{name}": "{shard}", ', 1))
    assert f"key {name!r} appears twice" in run_failing(expo, tmp_path, sft, aligned, code=3)


def test_index_disagreeing_with_the_shards(tmp_path, expo, llama_pair):
    sft, aligned, index_file, index = index_pair(tmp_path, llama_pair)
    names = list(index["weight_map"])
    shards = sorted(set(index["weight_map"].values()))
    moved = next(n for n in names if index["weight_map"][n] == shards[0])
    index["weight_map"][moved] = shards[1]
    index_file.write_text(json.dumps(index))
    assert "the index and the shards disagree" in run_failing(expo, tmp_path, sft, aligned, code=3)


def test_index_naming_a_tensor_no_shard_holds(tmp_path, expo, llama_pair):
    sft, aligned, index_file, index = index_pair(tmp_path, llama_pair)
    index["weight_map"]["ghost.weight"] = next(iter(index["weight_map"].values()))
    index_file.write_text(json.dumps(index))
    assert "'ghost.weight'" in run_failing(expo, tmp_path, sft, aligned, code=3)


@pytest.mark.parametrize(
    ("content", "message"), [(None, "no config.json"), ("{nope", "not valid JSON"), ("[]", "expected a JSON object")]
)
def test_bad_config(tmp_path, expo, llama_pair, content, message):
    sft, aligned = (shutil.copytree(p, tmp_path / p.name) for p in llama_pair)
    if content is None:
        (sft / "config.json").unlink()
    else:
        (sft / "config.json").write_text(content)
    assert message in run_failing(expo, tmp_path, sft, aligned, code=3)


def test_no_weights_in_folder(tmp_path, expo, llama_pair):
    sft, aligned = (shutil.copytree(p, tmp_path / p.name) for p in llama_pair)
    (sft / "model.safetensors").unlink()
    assert "no weights found" in run_failing(expo, tmp_path, sft, aligned, code=3)


def test_quantized_tensor_names_are_refused(tmp_path, expo, llama_pair):
    header = {"model.layers.0.self_attn.q_proj.qweight": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}
    sft, aligned = pair_with(tmp_path, llama_pair, header, b"\0" * 8)
    assert "is quantized" in run_failing(expo, tmp_path, sft, aligned, code=3)
