"""Property tests: mutated headers and indexes may only merge correctly or fail with expo's own error."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import expo_cli
from expo_cli.errors import ExpoError
from helpers import assert_correct, make_pair, read_all

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    return make_pair(tmp_path_factory.mktemp("fuzz"), dtype=torch.float16, aligned_shards="30KB")


@contextmanager
def damaged_copy(base: tuple[Path, Path]) -> Iterator[tuple[Path, Path, Path]]:
    """(root, sft, aligned): a private copy of the pair for one example to damage."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        yield root, *(shutil.copytree(p, root / p.name) for p in base)


def merge_or_clean_error(sft: Path, aligned: Path, root: Path) -> None:
    """The only two acceptable outcomes: a correct output, or an ExpoError with nothing written."""
    out = root / "out"
    try:
        expo_cli.merge(sft, aligned, out, 0.5, progress=False, warn=lambda _: None)
    except ExpoError as err:
        assert str(err) and "\n" not in str(err)
        assert not out.exists() and not list(root.glob(".expo-partial-*"))
        return
    merged, s, a = read_all(out), read_all(sft), read_all(aligned)
    assert merged.keys() == a.keys()
    for name, tensor in merged.items():
        if tensor.is_floating_point() and torch.isfinite(tensor).all():
            assert_correct(tensor, s[name], a[name], 0.5, name)


def header_of(file: Path) -> tuple[dict, bytes]:
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_file(file: Path, header: object, body: bytes) -> None:
    encoded = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(encoded)) + encoded + body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_headers(base, data):
    with damaged_copy(base) as (root, sft, aligned):
        file = sft / "model.safetensors"
        header, body = header_of(file)
        name = data.draw(st.sampled_from(sorted(header)))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
        value = data.draw(
            st.one_of(json_values, st.lists(st.integers(-2, 5000), max_size=3), st.sampled_from(["F16", "BF16", "I8"]))
        )
        if field is None:
            header[name] = value
        else:
            header[name] = {**header[name], field: value} if isinstance(header[name], dict) else value
        write_file(file, header, body)
        merge_or_clean_error(sft, aligned, root)


@FUZZ
@given(position=st.integers(0, 2000), byte=st.integers(0, 255), cut=st.integers(0, 3000))
def test_flipped_bytes_and_truncations(base, position, byte, cut):
    with damaged_copy(base) as (root, sft, aligned):
        file = sorted(aligned.glob("model-*.safetensors"))[0]
        data = bytearray(file.read_bytes())
        data[position % len(data)] = byte
        file.write_bytes(bytes(data[: len(data) - cut % 64]))
        merge_or_clean_error(sft, aligned, root)


@FUZZ
@given(data=st.data())
def test_mutated_indexes(base, data):
    with damaged_copy(base) as (root, sft, aligned):
        index_file = aligned / "model.safetensors.index.json"
        index = json.loads(index_file.read_text())
        names = sorted(index["weight_map"])
        action = data.draw(st.sampled_from(["value", "drop", "add", "replace"]))
        if action == "value":
            shard = data.draw(
                st.text(max_size=40) | st.sampled_from(["../x.safetensors", "/abs.safetensors", "a/b.safetensors"])
            )
            index["weight_map"][data.draw(st.sampled_from(names))] = shard
        elif action == "drop":
            del index["weight_map"][data.draw(st.sampled_from(names))]
        elif action == "add":
            index["weight_map"][data.draw(st.text(max_size=20))] = data.draw(
                st.sampled_from(sorted(set(index["weight_map"].values())))
            )
        else:
            index = data.draw(json_values)
        index_file.write_text(json.dumps(index))
        merge_or_clean_error(sft, aligned, root)
