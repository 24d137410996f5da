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


def test_headers_are_read_validated_and_paired_before_torch_is_imported(llama_pair):
    """The plan's first part needs no torch, so the disk reads ahead while torch imports (a second process: this one
    has torch already)."""
    import subprocess
    import sys

    sft, aligned = llama_pair
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from expo_cli.core.pairing import pair_tensors\n"
        "from expo_cli.inputs.checkpoint import load_checkpoint\n"
        f"sft = load_checkpoint(Path({str(sft)!r}), 'sft')\n"
        f"pairing = pair_tensors(sft, load_checkpoint(Path({str(aligned)!r}), 'aligned'))\n"
        "assert pairing.tensors, 'paired'\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
