"""The side-file policy: what an output carries from the aligned folder byte for byte, and what it leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expo_cli.errors import UsageError
from expo_cli.merging.sidefiles import MISTRAL_REASON, OTHER_REASON, borrow, copy_all, select

LOADER_FILES = {
    "tokenizer.json": "{}",
    "tokenizer_config.json": "{}",
    "special_tokens_map.json": "{}",
    "chat_template.jinja": "{{ messages }}",
    "generation_config.json": '{"do_sample": true}',
    "LICENSE": "Apache-2.0",
}
LEFTOVERS = {
    "adapter_config.json": "PEFT adapter files (the output is a full model)",
    "checkpoint-100/config.json": "training checkpoint (no weights the output uses)",
    "runs/events.out.tfevents.1.host": "training logs",
    "training_args.bin": "training state",
    "params.json": MISTRAL_REASON,
    "pytorch_model.bin": "weights in another format (not extrapolated)",
    "notes.txt": OTHER_REASON,
}


def folder_with(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_loader_files_travel_and_training_leftovers_stay_with_a_reason(tmp_path):
    weights_and_card = {"model.safetensors": "", "config.json": "{}", "README.md": "card"}
    folder = folder_with(tmp_path, {**LOADER_FILES, **LEFTOVERS, **weights_and_card})
    side = select(folder, own=["model.safetensors"])
    assert sorted(side.copied) == sorted(LOADER_FILES)
    assert side.skipped == LEFTOVERS  # the weights, config.json and README.md are written anew: not listed
    assert side.listing()["checkpoint-100/"] == LEFTOVERS["checkpoint-100/config.json"]


def test_custom_code_travels_when_auto_map_names_it_with_what_it_imports(tmp_path):
    auto_map = {"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}
    folder = folder_with(
        tmp_path,
        {
            "tokenizer_config.json": json.dumps(auto_map),
            "modeling_x.py": "from .configuration_x import XConfig\n",
            "configuration_x.py": "class XConfig: ...\n",
            "unrelated.py": "print('not imported')\n",
        },
    )
    side = select(folder)
    assert {"modeling_x.py", "configuration_x.py"} <= set(side.copied)
    assert side.skipped["unrelated.py"] == OTHER_REASON


def test_copy_and_skip_override_the_policy_and_must_match_a_file(tmp_path):
    folder = folder_with(tmp_path, {**LOADER_FILES, "notes.txt": "mine"})
    side = select(folder, copy=["notes.txt"], skip=["LICENSE"])
    assert "notes.txt" in side.copied and side.skipped == {"LICENSE": "left out by --skip"}
    with pytest.raises(UsageError, match="--copy 'missing.txt': matches no file"):
        select(folder, copy=["missing.txt"])
    with pytest.raises(UsageError, match="is a weight file"):
        select(folder_with(tmp_path, {"extra.safetensors": ""}), copy=["*.safetensors"])


def test_borrowed_files_come_from_their_own_folder_byte_for_byte(tmp_path):
    adapter = folder_with(tmp_path / "adapter", {"adapter_config.json": "{}", "README.md": "adapter card"})
    base = folder_with(tmp_path / "base", LOADER_FILES)
    side = select(adapter, own=["adapter_config.json"])
    borrow(side, base)
    assert sorted(side.copied) == sorted(LOADER_FILES) and set(side.borrowed.values()) == {base}
    out = tmp_path / "out"
    out.mkdir()
    copy_all(side, adapter, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {n: (base / n).read_bytes() for n in LOADER_FILES}
