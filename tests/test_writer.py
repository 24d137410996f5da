"""Shard planning and the streamed safetensors layout, checked against the safetensors library itself."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from expo_cli.core.writer import ShardStream, parse_size, plan_shards, write_index


@dataclass(frozen=True)
class Spec:
    name: str
    out_dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(torch.Size(self.shape).numel()) * {"BF16": 2, "F32": 4, "I64": 8}[self.out_dtype]


@pytest.mark.parametrize(
    ("text", "size"),
    [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1.5 GB", 15 * 10**8), ("123", 123), (77, 77)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "5XB", "", "GB"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_plan_follows_hf_naming_and_limits():
    specs = [Spec(f"t{i}", "BF16", (100,)) for i in range(10)]  # 200 bytes each
    shards = plan_shards(specs, 450)
    assert [s.filename for s in shards] == [f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)]
    assert [[t.name for t in s.tensors] for s in shards] == [[f"t{2 * i}", f"t{2 * i + 1}"] for i in range(5)]
    assert plan_shards(specs, "5GB")[0].filename == "model.safetensors"
    big = plan_shards([Spec("s1", "F32", (1,)), Spec("huge", "F32", (1000,)), Spec("s2", "F32", (1,))], 100)
    assert [[t.name for t in s.tensors] for s in big] == [["s1"], ["huge"], ["s2"]]  # over the limit: own shard


def test_streamed_shards_are_what_safetensors_reads(tmp_path):
    tensors = {
        "a": torch.randn(3, 5).to(torch.bfloat16),
        "empty": torch.empty(0, 4, dtype=torch.bfloat16),
        "ids": torch.arange(7, dtype=torch.int64),
        "b": torch.randn(11, dtype=torch.float32),
    }
    codes = {torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}
    specs = [Spec(n, codes[t.dtype], tuple(t.shape)) for n, t in tensors.items()]
    shards = plan_shards(specs, 40)
    stream = ShardStream(tmp_path, shards)
    for t in tensors.values():  # in pieces of odd sizes, crossing shard boundaries
        raw = t.contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
        for start in range(0, len(raw), 7):
            stream.write(memoryview(raw[start : start + 7]))
    stream.close()
    write_index(tmp_path, shards)
    loaded = {}
    for shard in shards:
        loaded.update(load_file(tmp_path / shard.filename))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[n], t) for n, t in tensors.items())
    assert stream.checksums == {
        s.filename: hashlib.sha256((tmp_path / s.filename).read_bytes()).hexdigest() for s in shards
    }
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(s.nbytes for s in specs)
    assert index["weight_map"] == {t.name: s.filename for s in shards for t in s.tensors}


def test_a_stream_shorter_than_its_plan_is_an_error_not_a_short_file(tmp_path):
    shards = plan_shards([Spec("a", "F32", (10,)), Spec("b", "F32", (10,))], 1000)
    stream = ShardStream(tmp_path, shards)
    stream.write(memoryview(bytes(40 + 36)))  # four bytes short of the planned 80
    with pytest.raises(RuntimeError, match="4 bytes short"):
        stream.close()
