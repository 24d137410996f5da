"""Reading the prompts expo tune generates from: every format, and bad files named record by record."""

from __future__ import annotations

import json

import pytest

from expo_cli.errors import InputError, UsageError
from expo_cli.tuning.objectives.prompts import load_prompts


def test_prompts_from_every_format(tmp_path):
    records = [
        {"prompt": "p1"},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "p2"},
                {"role": "assistant", "content": "a"},
            ]
        },
        "p3",
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "a.json").write_text(json.dumps({"data": records}))
    (tmp_path / "a.txt").write_text("p1\n\np2\np3\n")
    for name in ("a.jsonl", "a.json", "a.txt"):
        assert load_prompts(str(tmp_path / name)) == ["p1", "p2", "p3"], name
    samples = {tuple(load_prompts(str(tmp_path / "a.jsonl"), limit=2, seed=seed)) for seed in range(20)}
    assert samples == {("p1", "p2"), ("p1", "p3"), ("p2", "p3")}  # seeded random samples, in file order
    assert load_prompts(str(tmp_path / "a.jsonl"), limit=2, seed=5) == load_prompts(
        str(tmp_path / "a.jsonl"), limit=2, seed=5
    )
    (tmp_path / "f.jsonl").write_text(json.dumps({"question": "q1", "prompt": "x"}) + "\n")
    assert load_prompts(str(tmp_path / "f.jsonl"), field="question") == ["q1"]
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table({"prompt": ["p1", "p2"], "other": [1, 2]}), tmp_path / "a.parquet")
    assert load_prompts(str(tmp_path / "a.parquet")) == ["p1", "p2"]
    folder = tmp_path / "dataset"  # a dataset folder, read by the datasets library as a Hub dataset would be
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"prompt": "train only"}) + "\n")
    (folder / "test.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("p1", "p2", "p3")))
    assert load_prompts(str(folder), split="test") == ["p1", "p2", "p3"]
    assert load_prompts(str(folder), split="train") == ["train only"]
    with pytest.raises(InputError, match="--split nope: cannot load it"):
        load_prompts(str(folder), split="nope")


def test_bad_prompt_files_name_the_record(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    (tmp_path / "broken.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "empty.jsonl").write_text('{"prompt": ""}\n')
    (tmp_path / "a.csv").write_text("prompt\nx\n")
    cases = [
        ("bad.jsonl", InputError, "bad.jsonl record 2: no 'prompt' field or 'messages' list (it has 'text')"),
        ("broken.jsonl", InputError, "broken.jsonl line 2: not valid JSON"),
        ("empty.txt", InputError, "no prompts in it"),
        ("empty.jsonl", InputError, "record 1: the prompt is empty"),
        ("a.csv", UsageError, "use a .jsonl, .json, .txt, .parquet file"),
        ("missing.jsonl", InputError, "no such file"),
    ]
    for name, error, message in cases:
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            load_prompts(str(tmp_path / name))
    with pytest.raises(InputError, match="no field 'question'"):
        load_prompts(str(tmp_path / "bad.jsonl"), field="question")


def test_which_field_gives_the_prompt_and_which_prompts_are_refused(tmp_path):
    """The README's order: --prompt-field (a conversation in it read too), else `prompt`, else the first user turn
    of `messages`, else of `chosen` (UltraFeedback's preference pairs); blank prompts, --limit 0 and a relative
    path that is not there are refused."""

    def turns(text):
        return [{"role": "user", "content": text}, {"role": "assistant", "content": "a"}]

    records = [
        {"prompt": "from prompt", "messages": turns("from messages")},
        {"messages": turns("from messages"), "chosen": turns("from chosen")},
        {"chosen": turns("from chosen")},
        {"conversation": turns("from the named field")},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    assert load_prompts(str(path)) == ["from prompt", "from messages", "from chosen"]
    path.write_text(json.dumps(records[3]) + "\n")
    assert load_prompts(str(path), field="conversation") == ["from the named field"]
    path.write_text(json.dumps({"prompt": " \n\t"}) + "\n")
    with pytest.raises(InputError, match="record 1: the prompt is empty or not text"):
        load_prompts(str(path))
    path.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(UsageError, match="--limit 0: must be at least 1"):
        load_prompts(str(path), limit=0)
    for missing in ("./prompts", "../prompts"):  # org/name-like, but a path
        with pytest.raises(InputError, match="no such file"):
            load_prompts(missing)
