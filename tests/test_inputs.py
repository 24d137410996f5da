"""Resolving --sft and --aligned: what is refused before anything is read, and what the two sources are."""

from __future__ import annotations

import pytest

from expo_cli.errors import MismatchError, OutputError, UsageError
from expo_cli.inputs.checkpoint import Checkpoint
from expo_cli.inputs.resolve import resolve_inputs


def test_two_local_folders_are_read_as_they_are(llama_pair):
    sft, aligned = resolve_inputs(*llama_pair)
    assert isinstance(sft, Checkpoint) and isinstance(aligned, Checkpoint)
    assert (sft.path, aligned.path) == llama_pair and sft.tensors.keys() == aligned.tensors.keys()


def test_the_same_folder_twice_is_refused(llama_pair):
    sft, _ = llama_pair
    with pytest.raises(MismatchError, match="--sft and --aligned are both"):
        resolve_inputs(sft, sft)


@pytest.mark.parametrize("where", ["inside", "is"])
def test_an_output_that_is_or_sits_inside_an_input_is_refused(llama_pair, where):
    sft, aligned = llama_pair
    output = aligned / "out" if where == "inside" else aligned
    with pytest.raises(OutputError, match="--output .* (is inside|is the) --aligned"):
        resolve_inputs(sft, aligned, outputs=[output])


def test_a_revision_of_a_local_folder_is_refused(llama_pair):
    with pytest.raises(UsageError, match="--sft-revision: .* is a local folder, not a Hub repo id"):
        resolve_inputs(*llama_pair, sft_revision="main")


def test_sft_may_be_left_out_only_for_an_adapter(llama_pair):
    with pytest.raises(UsageError, match="^--sft is required$"):
        resolve_inputs(None, llama_pair[1])


def test_an_unknown_adapter_stack_is_refused(llama_pair):
    with pytest.raises(UsageError, match="--adapter-stack 'stacked': choose on-sft or continued"):
        resolve_inputs(*llama_pair, adapter_stack="stacked")
