"""The pieces of rank-sliced vLLM updates that need no engine: the block a loader's chain of views reads
(`slicing.box`), θ(α) computed on a block only (`slicing.compute_block`), and the fingerprint that proves a
region holds expo's values (`weight_check.digest`). The engine side is in test_vllm.py."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import expo_cli
from expo_cli.core.extrapolate import Extrapolators
from expo_cli.merging.api import prepare
from expo_cli.options import MergeOptions
from expo_cli.tuning.backends.slicing import bounding, box, compute_block, replay
from expo_cli.tuning.backends.weight_check import digest
from helpers import make_pair, read_all


def narrow(dim: int, start: int, length: int):
    return ("narrow", (dim, start, length), ())


def elements(shape, chain) -> set[int]:
    """Which elements of a tensor of `shape` a chain of views reads, found on real data."""
    numbered = torch.arange(torch.Size(shape).numel()).view(shape)
    return set(replay(numbered, chain).reshape(-1).tolist())


def block_elements(shape, block) -> set[int]:
    numbered = torch.arange(torch.Size(shape).numel()).view(shape)
    return set(numbered[tuple(slice(*d) for d in block)].reshape(-1).tolist())


@pytest.mark.parametrize(
    ("shape", "chain", "expected"),
    [
        ((8, 6), (narrow(0, 4, 4),), ((4, 8), (0, 6))),  # a column-parallel layer's rows
        ((8, 6), (narrow(1, 3, 3),), ((0, 8), (3, 6))),  # a row-parallel layer's columns
        ((8, 6), (("t", (), ()), narrow(0, 2, 2)), ((0, 8), (2, 4))),  # a transposed (Conv1D) weight's columns
        ((8, 6), (("chunk", (2, 0), ()), ("__getitem__", (1,), ())), ((4, 8), (0, 6))),  # a fused gate_up half
        ((8, 6), (narrow(0, 2, 4), ("view", (-1,), ())), ((2, 6), (0, 6))),  # whole rows, flattened
        ((6,), (narrow(0, 3, 3),), ((3, 6),)),  # a bias
        ((8, 6), (), ((0, 8), (0, 6))),  # replicated
    ],
)
def test_the_block_of_a_loaders_view_is_exactly_what_it_reads(shape, chain, expected):
    assert box(shape, torch.bfloat16, chain) == expected
    assert elements(shape, chain) == block_elements(shape, expected)


@pytest.mark.parametrize(
    "chain",
    [
        (("__getitem__", ((slice(None), slice(0, 6, 2)),), ()),),  # every other column: not a block
        (narrow(1, 0, 3), ("contiguous", (), ())),  # a copy: whatever it reads, it is not a view of the tensor
        (("view", (torch.int16,), ()),),  # a dtype change
        (narrow(1, 0, 3), ("reshape", (-1,), ())),  # a partial row flattened: a copy
        (("view", (-1,), ()), narrow(0, 3, 12)),  # two rows' worth, starting mid-row: not a block
    ],
)
def test_a_view_that_is_not_a_block_is_computed_whole(chain):
    assert box((8, 6), torch.bfloat16, chain) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    data=st.data(),
)
def test_any_chain_of_narrows_transposes_and_flattenings_gives_its_exact_block_or_none(shape, data):
    """Whatever the chain, a block it returns holds exactly the elements the view reads (never fewer: a worker
    would hand vLLM values it did not compute)."""
    chain = []
    current = list(shape)
    for _ in range(data.draw(st.integers(0, 4))):
        kind = data.draw(st.sampled_from(["narrow", "transpose", "flatten"]))
        if kind == "transpose" and len(current) >= 2:
            a, b = data.draw(st.permutations(range(len(current))))[:2]
            chain.append(("transpose", (a, b), ()))
            current[a], current[b] = current[b], current[a]
        elif kind == "flatten":  # a view of whole rows, or a copy
            chain.append(("reshape", (-1,), ()))
            current = [math.prod(current)]
        else:
            dim = data.draw(st.integers(0, len(current) - 1))
            start = data.draw(st.integers(0, max(0, current[dim] - 1)))
            length = data.draw(st.integers(0, max(0, current[dim] - start)))
            chain.append(narrow(dim, start, length))
            current[dim] = length
    found = box(tuple(shape), torch.float32, tuple(chain))
    if found is not None:
        assert elements(shape, chain) == block_elements(shape, found)
    if all(op == "narrow" for op, _, _ in chain):
        assert found is not None, "a chain of narrows is always a block"


def test_the_bounding_block_of_several_copies_holds_them_all():
    assert bounding([((0, 4), (0, 6)), ((4, 8), (2, 3))]) == ((0, 8), (0, 6))
    assert bounding([((0, 4),), None]) is None and bounding([]) is None


@pytest.mark.parametrize(("dtype", "sft_dtype"), [(torch.bfloat16, None), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("alpha", [0.7, 0.0, -1.0])
def test_a_block_computed_alone_is_bit_for_bit_that_block_of_the_merged_tensor(tmp_path, dtype, sft_dtype, alpha):
    sft, aligned = make_pair(tmp_path, dtype=dtype, sft_dtype=sft_dtype)
    merged = read_all(expo_cli.merge(sft, aligned, tmp_path / "out", alpha, progress=False).output)
    weights = prepare(sft, aligned, {}, MergeOptions(progress=False)).main
    t = next(t for t in weights.pairing.tensors if t.name == "model.layers.1.mlp.down_proj.weight")
    assert len(t.shape) == 2 and t.shape[1] >= 8
    block = ((3, t.shape[0] - 2), (t.shape[1] // 2, t.shape[1] - 1))
    width = block[1][1] - block[1][0]
    inside = tuple(slice(*d) for d in block)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    untouched = torch.ones(t.shape, dtype=torch.bool)
    untouched[inside] = False
    for rows in (1, 2, 3, 5):  # slabs of so many rows, the last one shorter or not
        target = torch.full(t.shape, 7.0, dtype=merged[t.name].dtype)
        with weights.sft, weights.aligned:
            compute_block(weights, t, block, alpha, target, torch.device("cpu"), Extrapolators(), chunk=rows * width)
        assert torch.equal(target[inside].view(bits), merged[t.name][inside].view(bits)), rows
        assert bool((target[untouched] == 7.0).all()), "elements outside the block are left as they were"
    assert not torch.equal(target, merged[t.name])


def test_the_fingerprint_changes_with_any_element_and_not_with_the_layout():
    values = torch.randn(64, 48).to(torch.bfloat16)
    assert digest(values) == digest(values.clone()) == digest(values.t().contiguous().t())
    assert digest(values[:, 8:24]) == digest(values[:, 8:24].contiguous())
    for row, column in ((0, 0), (63, 47), (17, 30)):
        changed = values.clone()
        changed.view(torch.int16)[row, column] += 1  # the next bfloat16 value: one unit in the last place
        assert digest(changed) != digest(values), (row, column)
    assert digest(values[:1]) != digest(values[1:2])
    assert digest(values, slab=5 * 48) == digest(values)  # slabs of 5 rows, the last one shorter
    for row in (4, 59, 63):  # the last row of a slab, of the last whole slab, of the shorter last slab
        changed = values.clone()
        changed.view(torch.int16)[row, 0] += 1
        assert digest(changed, slab=5 * 48) != digest(values, slab=5 * 48), row
    assert digest(torch.empty(0, 4)) == (0, 0)
    assert digest(torch.tensor(2.5)) == digest(torch.tensor([2.5]))
    for dtype in (torch.float32, torch.float64, torch.float16):
        data = torch.randn(10, 3, dtype=dtype)
        assert digest(data) != digest(data * 1.001)
