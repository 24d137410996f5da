"""Folders and repos laid out to leak or to fill the disk: a link out of the folder is never copied or published, a
huge side file is refused before any work, and a streamed merge fetches only what its output carries."""

from __future__ import annotations

import json
import os

import torch

from helpers import copy_tree, files_of, make_pair
from test_hub import publish, streamed_merge


def test_a_link_out_of_the_folder_is_never_copied_into_the_output_or_pushed(tmp_path, expo, hub, token, llama_pair):
    """`LICENSE -> ~/.cache/huggingface/token` planted in a cloned aligned folder: the merge is refused before any
    work (exit 3, one line naming the file, no output), and so is `expo push` of a folder holding such a link
    (nothing committed). A link that stays inside the folder is copied as the file it names; a linked folder is not
    entered."""
    sft, aligned = llama_pair
    secret = tmp_path / "home" / ".cache" / "huggingface" / "token"
    secret.parent.mkdir(parents=True)
    secret.write_text("hf_secret_token_value")
    cloned = copy_tree(aligned, tmp_path / "cloned")
    (cloned / "LICENSE").unlink(missing_ok=True)
    os.symlink(secret, cloned / "LICENSE")
    out = tmp_path / "out"
    run = expo("merge", "--sft", sft, "--aligned", cloned, "-o", out, "--alpha", "0.5")
    lines = run.stderr.strip().splitlines()
    assert run.code == 3 and lines[-1] == (
        f"Error: {cloned / 'LICENSE'}: a link to a file outside the folder; refusing to copy or publish it: replace "
        "the link with the file itself, or leave it out (--skip)"
    ), run.stderr
    assert not out.exists() and not list(tmp_path.glob(".expo-partial-*"))
    (cloned / "LICENSE").unlink()
    (cloned / "LICENSE.txt").write_text("Apache-2.0")
    os.symlink("LICENSE.txt", cloned / "LICENSE")  # inside the folder: fine
    os.symlink(secret.parent, cloned / "cache")  # a linked folder: not entered, nothing listed from it
    assert expo("merge", "--sft", sft, "--aligned", cloned, "-o", out, "--alpha", "0.5", "-q").code == 0
    assert (out / "LICENSE").read_text() == "Apache-2.0" and not (out / "LICENSE").is_symlink()
    assert "hf_secret_token_value" not in "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
    os.symlink(secret, out / "NOTICE")
    hub.create("me/leak")
    refs = dict(hub.repos["me/leak"].refs)
    run = expo("push", out, "me/leak")
    assert run.code == 3 and "NOTICE: a link to a file outside the folder" in run.stderr, run.stderr
    assert hub.repos["me/leak"].refs == refs
    assert not any(b"hf_secret_token_value" in data for data in hub.lfs.values())


def test_a_huge_side_file_is_refused_before_any_work(tmp_path, expo, llama_pair):
    """A 1.1 GiB tokenizer.json (sparse: no disk used) is past the 1 GiB limit on a file beside the weights."""
    sft, aligned = llama_pair
    cloned = copy_tree(aligned, tmp_path / "cloned")
    with open(cloned / "tokenizer.json", "wb") as fh:
        fh.truncate(1_170_000_000)
    run = expo("merge", "--sft", sft, "--aligned", cloned, "-o", tmp_path / "out", "--alpha", "0.5")
    assert run.code == 3 and run.stderr.strip().splitlines()[-1] == (
        f"Error: {cloned / 'tokenizer.json'}: 1.17 GB, more than the 1.07 GB a file beside the weights may be; "
        "leave it out (--skip)"
    )
    assert not (tmp_path / "out").exists()
    args = ["--sft", sft, "--aligned", cloned, "-o", tmp_path / "out", "--alpha", "0.5"]
    skipped = expo("merge", *args, "--skip", "tokenizer.json")
    assert skipped.code == 0, skipped.stderr


def test_a_streamed_merge_fetches_only_the_files_its_output_carries(tmp_path, expo, hub, token, monkeypatch):
    """Of the aligned repo, --stream downloads the loader files, the custom code auto_map names and what that imports,
    and nothing else: not notes, logs or other code anywhere in the repo; a listed side file past the limit is
    refused from the listing, before anything is downloaded."""
    import expo_cli.inputs.hub as expo_hub

    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32, aligned_shards="40KB")
    files = files_of(aligned)
    config = json.loads(files["config.json"])
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    files["config.json"] = json.dumps(config).encode()
    files["modeling_custom.py"] = b"from .helpers import scale\n\nclass CustomForCausalLM: ...\n"
    files["helpers.py"] = b"scale = 1\n"
    stray = {"unused.py": b"x = 1\n", "notes.txt": b"n" * 100_000, "docs/guide.md": b"#", "logs/metrics.json": b"{}"}
    hub.create("org/carry-dpo", {**files, **stray})
    publish(hub, "org/carry-sft", sft)
    hub.create("me/carried")
    hub.requests.clear()
    run = streamed_merge(expo, "org/carry-sft", "org/carry-dpo", "me/carried", tmp_path / "s", "--alpha", "0.5", "-q")
    assert run.code == 0, run.stderr
    fetched = {path.split("/resolve/", 1)[1].split("/", 1)[1] for m, path, _ in hub.requests if "/resolve/" in path}
    assert not fetched & set(stray), fetched & set(stray)
    published = hub.repos["me/carried"].commits[hub.repos["me/carried"].refs["main"]]
    assert {"modeling_custom.py", "helpers.py", "tokenizer.json"} <= set(published)
    assert not set(published) & set(stray)
    monkeypatch.setattr(expo_hub, "MAX_SIDE_FILE_BYTES", 1000)
    hub.requests.clear()
    run = streamed_merge(expo, "org/carry-sft", "org/carry-dpo", "me/carried", tmp_path / "s", "--alpha", "1", "-q")
    last = run.stderr.strip().splitlines()[-1]
    assert run.code == 3 and last.startswith("Error: org/carry-dpo/") and "more than the 1.00 kB" in last, last
    assert not any(m == "GET" and "/resolve/" in path and "tokenizer" in path for m, path, _ in hub.requests)
