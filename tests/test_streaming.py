"""The streaming core as a library: a serialisable plan, execution of any subset of shards, pluggable sinks."""

from __future__ import annotations

import json

import pytest
import torch

import expo_cli
from expo_cli.core.pairing import pair_tensors
from expo_cli.core.sources import blocks
from expo_cli.core.streaming import Target, stream, walk
from expo_cli.errors import OutputError
from expo_cli.inputs.checkpoint import load_checkpoint
from expo_cli.merging.execution import finish, write_shards
from expo_cli.merging.planning import prepare
from expo_cli.options import MergeOptions
from helpers import read_all


def test_blocks_are_whole_rows_within_the_limit():
    assert list(blocks(12, 4, 10)) == [(0, 8), (8, 12)]  # two rows per block
    assert list(blocks(7, 1, 3)) == [(0, 3), (3, 6), (6, 7)]  # vectors: elements
    assert list(blocks(20, 10, 4)) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]  # a row over the limit: split
    for numel, row, limit in [(0, 5, 8), (96 * 32, 32, 999), (5, 5, 5)]:
        spans = list(blocks(numel, row, limit))
        assert [s for s, _ in spans] == ([0, *(e for _, e in spans[:-1])] if spans else [])
        assert (spans[-1][1] if spans else 0) == numel
        assert all(e - s <= limit or row > limit for s, e in spans)
        assert all(s % row == 0 for s, _ in spans) or row > limit


def test_the_plan_is_serialisable_deterministic_and_private(tmp_path, llama_pair):
    sft, aligned = llama_pair
    first = prepare(sft, aligned, {0.5: tmp_path / "out"}, MergeOptions(progress=False, max_shard_size="30KB"))
    second = prepare(sft, aligned, {0.5: tmp_path / "out"}, MergeOptions(progress=False, max_shard_size="30KB"))
    text = json.dumps(first.to_json(), sort_keys=True)
    assert text == json.dumps(second.to_json(), sort_keys=True)
    assert str(tmp_path) not in text and str(sft.parent) not in text
    plan = first.to_json()
    shards = plan["weights"][0]["shards"]
    assert len(shards) > 1 and sum(len(s["tensors"]) for s in shards) == len(plan["weights"][0]["tensors"])
    assert {t["alpha"]["0.5"] for t in plan["weights"][0]["tensors"]} == {0.5}


def test_parts_of_a_run_written_separately_equal_the_whole(tmp_path, llama_pair):
    sft, aligned = llama_pair
    whole = expo_cli.merge(sft, aligned, tmp_path / "whole", 0.5, max_shard_size="30KB", progress=False)
    opts = MergeOptions(progress=False, max_shard_size="30KB")
    run = prepare(sft, aligned, {0.5: tmp_path / "parts"}, opts)
    folder = tmp_path / "staged"
    folder.mkdir()
    names = [s.filename for s in run.main.shards]
    checksums = {}
    for part in (names[1::2], names[0::2]):  # in any order, as independent processes would
        checksums.update(write_shards(run, {0.5: folder}, opts, only=set(part))[0.5])
        if len(checksums) < len(names):
            with pytest.raises(OutputError, match="missing or incomplete"):
                finish(run, 0.5, folder, checksums)  # a part is still missing: nothing is finished
            assert not (folder / "config.json").exists()
    finish(run, 0.5, folder, checksums)
    for name in whole.shards + ["model.safetensors.index.json"]:
        assert (folder / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert (
        json.loads((folder / "config.json").read_text())["expo"]["shards"]
        == json.loads((tmp_path / "whole" / "config.json").read_text())["expo"]["shards"]
    )


class TensorsSink:
    """A sink that keeps each output tensor in memory: what a sink into a loaded model's parameters does."""

    def __init__(self, tensors):
        self.tensors = {t.name: torch.empty(t.numel, dtype=out) for t, out in tensors}

    def buffer(self, t, start, stop):
        return self.tensors[t.name][start:stop]

    def put(self, t, start, stop, data, ready=None):
        if isinstance(data, memoryview):  # raw bytes of a block copied unchanged
            self.tensors[t.name][start:stop].view(torch.uint8).copy_(torch.frombuffer(data, dtype=torch.uint8))

    def close(self):
        return {}

    def abort(self):
        pass


def test_a_sink_of_ones_own_gets_what_the_shards_get(tmp_path, llama_pair):
    from expo_cli.core.engine import ChunkEngine
    from expo_cli.core.sources import torch_dtype

    sft, aligned = llama_pair
    merged = expo_cli.merge(sft, aligned, tmp_path / "out", 0.3, dtype="float32", progress=False)
    run = prepare(sft, aligned, {0.3: tmp_path / "unused"}, MergeOptions(progress=False, dtype="float32"))
    weights = run.main
    sink = TensorsSink([(t, torch_dtype(t.out_dtype)) for t in weights.pairing.tensors])
    with weights.sft, weights.aligned:
        stream(
            weights.pairing.tensors,
            weights.sft,
            weights.aligned,
            [Target(run.alphas(0.3, weights.pairing), sink)],
            ChunkEngine(torch.device("cpu")),
            False,
            lambda t, a: None,
        )
    on_disk = read_all(merged.output)
    for t in weights.pairing.tensors:
        assert torch.equal(sink.tensors[t.name].view(t.shape), on_disk[t.name]), t.name


class Announced:
    """A local checkpoint that asks the walk to announce `read_ahead` blocks ahead, and records what it hears."""

    def __init__(self, source, read_ahead: int) -> None:
        self.source, self.read_ahead, self.heard = source, read_ahead, []
        self.tensors, self.config, self.path = source.tensors, source.config, source.path

    def prefetch(self, info, start: int, stop: int) -> None:
        self.heard.append((info.name, start, stop))


@pytest.mark.parametrize("read_ahead", [1, 3])
def test_the_walk_announces_as_many_blocks_ahead_as_a_source_asks(llama_pair, read_ahead):
    sft, aligned = (load_checkpoint(p, role) for p, role in zip(llama_pair, ("sft", "aligned"), strict=True))
    announced = Announced(aligned, read_ahead)
    tensors = pair_tensors(sft, aligned).tensors
    order = [(t.name, start, stop) for t in tensors for start, stop in blocks(t.numel, t.aligned.row_numel, 500)]
    for k, block in enumerate(walk(tensors, sft, announced, limit=500)):
        assert (block.tensor.name, block.start, block.stop) == order[k]
        # while block k is processed, blocks k+1 .. k+read_ahead have been announced, and none further
        assert announced.heard == order[1 : k + 1 + read_ahead], k
