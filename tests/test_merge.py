"""End-to-end merges of tiny real models: every tensor against the float64 reference of the formula."""

from __future__ import annotations

import json
import struct
import time

import pytest
import torch
from safetensors import safe_open

import expo_cli
from helpers import assert_merged, make_pair, read_all, snapshot


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("alpha", [0.3, 2.5, -0.5])
def test_every_tensor_matches_the_float64_reference(tmp_path, dtype, alpha):
    sft, aligned = make_pair(tmp_path, dtype=dtype, sft_shards="25KB", aligned_shards="40KB")
    result = expo_cli.merge(sft, aligned, tmp_path / "out", alpha, max_shard_size="30KB", progress=False)
    assert_merged(tmp_path / "out", sft, aligned, alpha)
    assert result.tensors == result.extrapolated == len(read_all(aligned))
    assert len(result.shards) > 1


def test_alpha_zero_is_the_aligned_model_bit_for_bit(tmp_path, llama_pair):
    sft, aligned = llama_pair
    expo_cli.merge(sft, aligned, tmp_path / "out", 0.0, progress=False)
    merged, a = read_all(tmp_path / "out"), read_all(aligned)
    assert all(torch.equal(merged[k].view(torch.int16), a[k].view(torch.int16)) for k in a)


def test_alpha_minus_one_is_the_sft_model(tmp_path, llama_pair):
    sft, aligned = llama_pair
    expo_cli.merge(sft, aligned, tmp_path / "out", -1.0, progress=False)
    merged, s = read_all(tmp_path / "out"), read_all(sft)
    assert all(torch.equal(merged[k], s[k]) for k in merged)


def test_huge_tensors_are_processed_in_chunks(tmp_path, llama_pair, monkeypatch):
    """Chunk boundaries anywhere inside a tensor must not change a single bit."""
    sft, aligned = llama_pair
    expo_cli.merge(sft, aligned, tmp_path / "whole", 0.7, progress=False)
    monkeypatch.setattr("expo_cli.core.streaming.CHUNK_ELEMENTS", 999)
    expo_cli.merge(sft, aligned, tmp_path / "chunked", 0.7, progress=False)
    whole, chunked = read_all(tmp_path / "whole"), read_all(tmp_path / "chunked")
    assert all(torch.equal(whole[k], chunked[k]) for k in whole)


def test_output_files_follow_the_hf_layout(tmp_path, llama_pair):
    sft, aligned = llama_pair
    result = expo_cli.merge(sft, aligned, tmp_path / "out", 0.5, max_shard_size="20KB", progress=False)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    n = len(result.shards)
    assert result.shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert set(index["weight_map"].values()) == set(result.shards)
    stored = 0
    for shard in result.shards:
        with safe_open(out / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():
                assert index["weight_map"][name] == shard
                t = f.get_tensor(name)
                stored += t.numel() * t.element_size()
        (length,) = struct.unpack("<Q", (out / shard).read_bytes()[:8])
        assert length % 8 == 0
    assert index["metadata"]["total_size"] == stored
    single = expo_cli.merge(sft, aligned, tmp_path / "single", 0.5, progress=False)
    assert single.shards == ["model.safetensors"]
    assert not (tmp_path / "single" / "model.safetensors.index.json").exists()


def test_config_card_and_files_of_the_aligned_model(tmp_path, llama_pair):
    from huggingface_hub import ModelCard

    sft, aligned = llama_pair
    expo_cli.merge(sft, aligned, tmp_path / "out", 0.5, dtype="float32", progress=False)
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    original = json.loads((aligned / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert {k: v for k, v in config.items() if k not in ("dtype", "expo")} == {
        k: v for k, v in original.items() if k != "dtype"
    }
    assert config["expo"]["alpha"] == 0.5
    assert (
        config["expo"]["formula"] == "θ_expo = θ_aligned + 0.5·(θ_aligned − θ_sft) = θ_sft + 1.5·(θ_aligned − θ_sft)"
    )
    assert config["expo"]["sft"]["name"] == sft.name and config["expo"]["aligned"]["name"] == aligned.name
    assert config["expo"]["expo_version"] == expo_cli.__version__
    loader_files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
    for name in (*loader_files, "generation_config.json"):
        assert (out / name).read_bytes() == (aligned / name).read_bytes(), name
    assert not (out / "modeling_custom.py").exists()  # no auto_map names it: see test_publish
    card = ModelCard.load(out / "README.md")
    assert {"expo", "merge"} <= set(card.data.tags)
    assert card.data.library_name == "transformers"
    assert "θ_sft + 1.5·(θ_aligned − θ_sft)" in card.text
    assert_merged(out, sft, aligned, 0.5, dtype=torch.float32)


def test_hub_cache_folders_are_recorded_as_repo_ids(tmp_path, llama_pair):
    """A folder of the huggingface_hub cache names its repo and commit in the card's base_model."""
    import shutil

    from huggingface_hub import ModelCard

    sft, aligned = llama_pair
    sha = "a" * 40
    cached = tmp_path / "hub" / "models--org--zephyr-dpo" / "snapshots" / sha
    shutil.copytree(aligned, cached)
    expo_cli.merge(sft, cached, tmp_path / "out", 0.5, progress=False)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == ["org/zephyr-dpo"]
    assert card.data.base_model_relation == "merge"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["expo"]["aligned"]["repo_id"] == "org/zephyr-dpo"
    assert config["expo"]["aligned"]["revision"] == sha


def test_inputs_are_never_modified(tmp_path, llama_pair):
    sft, aligned = llama_pair
    before = snapshot(sft), snapshot(aligned)
    expo_cli.merge(sft, aligned, tmp_path / "out", 0.5, progress=False)
    assert (snapshot(sft), snapshot(aligned)) == before


def test_mixed_input_dtypes_round_once_to_the_aligned_dtype(tmp_path):
    sft, aligned = make_pair(tmp_path, dtype=torch.bfloat16, sft_dtype=torch.float32)
    expo_cli.merge(sft, aligned, tmp_path / "out", 0.4, progress=False)
    assert_merged(tmp_path / "out", sft, aligned, 0.4)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dtype_override(tmp_path, llama_pair, dtype):
    sft, aligned = llama_pair
    expo_cli.merge(sft, aligned, tmp_path / "out", 0.5, dtype=dtype, progress=False)
    assert_merged(tmp_path / "out", sft, aligned, 0.5, dtype=getattr(torch, dtype))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == dtype


def test_pytorch_bin_inputs(tmp_path):
    sft, aligned = make_pair(tmp_path, dtype=torch.float16, sft_fmt="bin", aligned_fmt="bin")
    result = expo_cli.merge(sft, aligned, tmp_path / "out", 0.5, progress=False)
    assert result.shards == ["model.safetensors"]
    assert_merged(tmp_path / "out", sft, aligned, 0.5)


def test_float64_is_computed_in_float64(tmp_path):
    sft, aligned = make_pair(tmp_path, dtype=torch.float64)
    expo_cli.merge(sft, aligned, tmp_path / "out", 0.3, progress=False)
    assert_merged(tmp_path / "out", sft, aligned, 0.3)


def test_a_profile_accounts_for_the_merge_by_stage_and_thread_and_changes_no_byte(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    pair = ["--sft", sft, "--aligned", aligned, "--alpha", "0.5", "-q"]
    plain = expo("merge", *pair, "-o", tmp_path / "plain")
    run = expo("merge", *pair, "-o", tmp_path / "out", "--profile", "--json")
    assert plain.code == 0 and run.code == 0, run.stderr
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        tmp_path / "plain" / "model.safetensors"
    ).read_bytes()
    profile = json.loads(run.stdout)["profile"]
    stages = {(s["thread"], s["stage"]): s for s in profile["stages"]}
    for expected in (
        ("MainThread", "import torch"),
        ("MainThread", "plan (inputs, headers)"),
        ("MainThread", "read + compute"),
        ("MainThread", "finish (index, config, card, side files)"),
        ("MainThread", "rename into place"),
        ("expo-writer", "write"),
        ("expo-writer", "fsync"),
        ("expo-hasher", "hash"),
    ):
        assert expected in stages, expected
    main = sum(s["wall_seconds"] for (thread, _), s in stages.items() if thread == "MainThread")
    assert 0 < main <= profile["wall_seconds"] * 1.001  # exclusive stages of one thread never exceed its time
    assert all(s["cpu_seconds"] <= s["wall_seconds"] * 1.05 + 0.01 for s in profile["stages"])
    assert 0 < profile["cpu_utilisation"] <= 1.0 and profile["cores"] >= 1
    assert "Profile: " in run.stderr and "of the machine busy" in run.stderr


def test_the_profile_table_keeps_its_columns_whatever_the_thread_names():
    """--stream's range threads carry the input's name: the thread column widens to the longest, so every stage and
    figure stays in its column."""
    from expo_cli.cli.merge import _profile_table

    threads = ["MainThread", "expo-range-some-long-model-name_11", "expo-writer"]
    stage = {"wall_seconds": 1.5, "cpu_seconds": 0.25, "calls": 3}
    profile = {"stages": [{"thread": t, "stage": "range request", **stage} for t in threads]}
    profile |= {"wall_seconds": 2.0, "cpu_seconds": 1.0, "cores": 2, "cpu_utilisation": 0.25}
    header, *rows, total = _profile_table(profile)
    column = header.index("stage")
    assert column > len(threads[1]) and all(row.index("range request") == column for row in rows)
    assert len({len(row) for row in [header, *rows]}) == 1 and total.startswith("Profile: 2.00 s wall")


def test_a_profile_stage_excludes_the_stages_nested_in_it():
    import time

    from expo_cli.core.profile import Profile

    profile = Profile()
    with profile.stage("outer"):
        time.sleep(0.05)
        with profile.stage("inner"):
            time.sleep(0.1)
        time.sleep(0.05)
    stages = {s["stage"]: s for s in profile.to_json()["stages"]}
    assert stages["outer"]["wall_seconds"] == pytest.approx(0.1, abs=0.03)
    assert stages["inner"]["wall_seconds"] == pytest.approx(0.1, abs=0.03)
    assert stages["outer"]["calls"] == stages["inner"]["calls"] == 1
    assert stages["outer"]["cpu_seconds"] < 0.03  # sleeping is waiting, not CPU


def test_parallel_shard_streams_write_the_bytes_of_one_stream(tmp_path, expo, llama_pair):
    """Shards written at once by several streams: every file (shards, index, provenance, card) as one stream
    writes it, for a merge and a sweep."""
    from helpers import files_of

    sft, aligned = llama_pair
    common = ["--sft", sft, "--aligned", aligned, "--max-shard-size", "12KB", "-q"]
    for alphas in ("0.5", "0.3,-0.5"):
        written = {}
        for streams in (1, 3):
            out = tmp_path / f"{alphas}-{streams}"
            run = expo("merge", *common, "-o", out, "--alpha", alphas, "--streams", streams)
            assert run.code == 0, run.stderr
            written[streams] = files_of(out)
        assert sum(name.endswith(".safetensors") for name in written[1]) > 3  # more shards than streams
        assert written[3] == written[1]


def test_a_failure_in_any_stream_stops_them_all_and_writes_nothing(tmp_path, expo):
    """The overflow is in the last shard (another stream than the calling thread's): its error is the one told."""
    sft, aligned = make_pair(tmp_path, dtype=torch.float16)
    out = tmp_path / "out"
    args = ["-o", out, "--alpha", "0.5", "--alpha-for", "lm_head=1e9", "--max-shard-size", "12KB", "--streams", "3"]
    run = expo("merge", "--sft", sft, "--aligned", aligned, *args)
    assert run.code == 6, run.stderr
    assert "tensor 'lm_head.weight': α=1e+09 overflows float16" in run.stderr.strip().splitlines()[-1]
    assert not out.exists() and not list(tmp_path.glob(".expo-partial-*"))


class LateReads:
    """A checkpoint whose tensors in `late` are read only after `delay` seconds (the other streams' time to fail),
    counting the blocks then read of them."""

    def __init__(self, source, late: set[str], delay: float, interrupted_at: str | None = None) -> None:
        self.source, self.late, self.delay, self.reads = source, late, delay, 0
        self.interrupted_at = interrupted_at  # a tensor whose read is interrupted, as Ctrl-C does on the main thread

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __enter__(self):
        self.source.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.source.__exit__(*exc)

    def flat(self, info, start, stop):
        if info.name == self.interrupted_at:
            raise KeyboardInterrupt
        if info.name in self.late:
            time.sleep(self.delay if not self.reads else 0)
            self.reads += 1
        return self.source.flat(info, start, stop)


@pytest.mark.parametrize("failure", ["overflow", "Ctrl-C"])
def test_a_stream_stops_at_its_next_block_once_another_has_failed(tmp_path, failure):
    """Stream 0 (the main thread's) overflows, or is interrupted, at its first tensor while stream 1 has not
    started: stream 1 then computes at most the block it was reading, never the rest of its shards."""
    from expo_cli.errors import NonFiniteError
    from expo_cli.merging.api import prepare
    from expo_cli.merging.execution import consecutive_groups, execute
    from expo_cli.options import MergeOptions

    sft, aligned = make_pair(tmp_path, dtype=torch.float16)
    common = {"progress": False, "streams": 2, "max_shard_size": "12KB"}
    planned = prepare(sft, aligned, {0.5: tmp_path / "out"}, MergeOptions(**common))
    first, second = consecutive_groups(planned.weights[0].shards, 2)
    failing = first[0].tensors[0].name
    opts = MergeOptions(**common, alpha_for=[f"^{failing}$=1e9"] if failure == "overflow" else [])
    run = prepare(sft, aligned, {0.5: tmp_path / "out"}, opts)
    weights = run.weights[0]
    late = {t.name for shard in second for t in shard.tensors}
    assert len(late) > 3, "the second stream has several tensors to compute"
    interrupted = failing if failure == "Ctrl-C" else None
    weights.aligned = watched = LateReads(weights.aligned, late, delay=2.0, interrupted_at=interrupted)
    with pytest.raises(NonFiniteError if failure == "overflow" else KeyboardInterrupt):
        execute(run, opts)
    assert watched.reads <= 1, f"stream 1 read {watched.reads} blocks after stream 0 failed"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".expo-partial-*"))


def test_the_streams_abort_a_stream_that_joins_after_another_failed():
    """A stream whose thread was still starting when another failed (at its first block, as Ctrl-C does) has its
    sinks aborted as it joins, so it stops at its first write; those that joined before are aborted by the failure."""
    from expo_cli.merging.execution import Streams

    class Sink:
        aborted = False

        def abort(self):
            self.aborted = True

    streams, early, late = Streams(), [Sink(), Sink()], [Sink()]
    streams.join(early)
    assert not any(s.aborted for s in early)
    streams.fail()
    assert all(s.aborted for s in early)
    streams.join(late)
    assert late[0].aborted
