"""Reading the prompts `expo tune` generates from: a local file, a dataset folder or a Hub dataset, validated
before any model loads.

Each record gives one prompt: the `--prompt-field` when named; otherwise `prompt`, or the first user turn of a
`messages` (or `chosen`) conversation, which is how the paper took UltraFeedback's `test_gen` prompts. A bare
string is a prompt too (a `.txt` file is one prompt per line).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...errors import InputError, UsageError, first_line
from ...lines import json_lines, split_lines
from ..decision.holdout import sample

FORMATS = (".jsonl", ".json", ".txt", ".parquet")


def load_prompts(
    source: str,
    field: str | None = None,
    split: str = "test",
    limit: int | None = None,
    token: str | None = None,
    seed: int = 0,
) -> list[str]:
    """The prompts of `source` (a file of one of FORMATS, a dataset folder or a Hub dataset `org/name`): a seeded
    random sample of `limit` of them, in their order in the source."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: must be at least 1")
    path = Path(source)
    if path.is_dir():  # a dataset folder (data files, or save_to_disk's): through the datasets library too
        records, where = _read_dataset(source, split, token), f"{path.name} ({split})"
    elif path.exists():
        records, where = _read_file(path), path.name
    elif path.suffix in FORMATS or not _looks_like_dataset(source):
        raise InputError(f"--prompts {source}: no such file (or a Hub dataset id org/name)")
    else:
        records, where = _read_dataset(source, split, token), f"{source} ({split})"
    records = records if hasattr(records, "__getitem__") else list(records)  # a Dataset indexes without a copy
    prompts = [prompt_of(records[i], field, f"{where} record {i + 1}") for i in sample(len(records), limit, seed)]
    if not prompts:
        raise InputError(f"--prompts {source}: no prompts in it")
    return prompts


def prompt_of(record: Any, field: str | None, where: str) -> str:
    """One record's prompt text; an error names the record and says which fields it has."""
    if isinstance(record, str):
        value: Any = record
    elif not isinstance(record, dict):
        raise InputError(f"{where}: expected an object or a string, found {type(record).__name__}")
    elif field is not None:
        if field not in record:
            raise InputError(
                f"{where}: no field {field!r} (it has {', '.join(map(repr, record)) or 'none'}); set --prompt-field"
            )
        value = record[field]
        if isinstance(value, list):
            value = _first_user_turn(value, where)
    elif "prompt" in record:
        value = record["prompt"]
    elif isinstance(record.get("messages") or record.get("chosen"), list):
        value = _first_user_turn(record.get("messages") or record["chosen"], where)
    else:
        raise InputError(
            f"{where}: no 'prompt' field or 'messages' list (it has {', '.join(map(repr, record))}); "
            "set --prompt-field"
        )
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: the prompt is empty or not text")
    return value


def _first_user_turn(messages: list[Any], where: str) -> str:
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            return message.get("content")
    raise InputError(f"{where}: the conversation has no user turn")


def _looks_like_dataset(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/"))


def _read_file(path: Path) -> Iterable[Any]:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"--prompts {path.name}: use a {', '.join(FORMATS)} file or a Hub dataset org/name")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional: only for dataset and parquet prompts
        except ImportError as err:
            raise UsageError("--prompts: a .parquet file needs pyarrow (pip install pyarrow)") from err
        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # any parse failure is a bad input
            raise InputError(f"--prompts {path.name}: not a readable parquet file ({err})") from err
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--prompts {path.name}: cannot read it as UTF-8 text ({err})") from err
    if suffix == ".txt":
        return [line for _, line in split_lines(text)]
    if suffix == ".jsonl":
        return [
            value
            for _, value in json_lines(
                text, lambda n, why: InputError(f"--prompts {path.name} line {n}: not valid JSON ({why})")
            )
        ]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"--prompts {path.name}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"prompts": [...]}, {"data": [...]}
    if not isinstance(data, list):
        raise InputError(f"--prompts {path.name}: expected a JSON list of prompts")
    return data


def _read_dataset(name: str, split: str, token: str | None) -> Iterable[Any]:
    try:
        import datasets  # optional: only for dataset and parquet prompts
    except ImportError as err:
        raise UsageError(
            f"--prompts {name}: a Hub dataset needs the datasets library "
            "(pip install 'expo-cli[tune]'), or pass a local .jsonl file"
        ) from err
    try:
        return datasets.load_dataset(name, split=split, token=token)
    except Exception as err:  # network, missing split, parse errors: all the user's to fix
        raise InputError(f"--prompts {name} --split {split}: cannot load it ({first_line(err)})") from err
