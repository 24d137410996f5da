"""Preparing a run: options refused where they are made, and what `prepare` decides from headers alone."""

from __future__ import annotations

import re
import shutil

import pytest

from expo_cli.errors import MismatchError, OutputError, UsageError
from expo_cli.fsutil import HEADROOM
from expo_cli.merging.planning import prepare
from expo_cli.options import MergeOptions

QUIET = {"progress": False, "info": lambda _: None}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mistral_format": True, "alpha_for": ["embed=0"]}, "--mistral-format cannot take per-tensor α rules"),
        ({"mistral_format": True, "stream": True}, "--stream writes the Hugging Face format only"),
        ({"mistral_format": True, "as_adapter": True}, "--as-adapter writes a PEFT adapter"),
        ({"max_shard_size": "lots"}, "--max-shard-size 'lots': use a size such as 5GB"),
        ({"max_shard_size": 0}, "--max-shard-size 0: must be positive"),
        ({"dtype": "int8"}, "--dtype 'int8': choose one of"),
        ({"alpha_for": ["embed"]}, "--alpha-for 'embed': write REGEX=VALUE"),
        ({"aligned_id": "not a repo"}, "--aligned-id 'not a repo': write the Hub repo as org/name"),
    ],
)
def test_bad_or_conflicting_options_are_refused_when_made(options, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        MergeOptions(**options)


def test_a_sweep_needs_room_for_every_output_and_names_each(tmp_path, llama_pair):
    sft, aligned = llama_pair
    run = prepare(sft, aligned, {0.3: tmp_path / "a", 0.6: tmp_path / "b"}, MergeOptions(**QUIET))
    written = sum(s.size for s in run.main.shards)
    copied = sum((aligned / f).stat().st_size for f in run.side_files.copied)
    assert run.disk_needed == 2 * (written + copied + HEADROOM)
    assert run.model_names == {0.3: "aligned-expo-alpha-0.3", 0.6: "aligned-expo-alpha-0.6"}
    assert [w.index_name for w in run.weights] == ["model.safetensors.index.json"]
    assert run.sources[1].name == "aligned" and run.leftovers == []


def test_a_run_without_room_is_refused_before_anything_is_written(tmpfs, llama_pair):
    small = tmpfs("64k")
    with pytest.raises(OutputError, match="not enough space"):
        prepare(*llama_pair, {0.5: small / "out"}, MergeOptions(**QUIET))
    assert not any(small.iterdir())


def test_identical_inputs_are_refused_unless_forced(tmp_path, llama_pair):
    sft, _ = llama_pair
    twin = shutil.copytree(sft, tmp_path / "twin")
    with pytest.raises(MismatchError, match="the two checkpoints are identical"):
        prepare(sft, twin, {0.5: tmp_path / "out"}, MergeOptions(**QUIET))
    assert prepare(sft, twin, {0.5: tmp_path / "out"}, MergeOptions(force=True, **QUIET)).main.pairing.extrapolated
