"""A Hub, CDN or proxy that misbehaves on purpose: no server holds a run, tampers with what is published, or gets
a commit made twice. Each case ends in success with the right bytes, or in one line and exit 7 with nothing
committed."""

from __future__ import annotations

import time

import pytest
import torch

from helpers import make_pair
from test_hub import assert_streamed_like_local, publish, streamed_merge


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("hostile"), dtype=torch.float32, aligned_shards="40KB")


def test_retry_after_is_read_strictly_and_capped():
    from expo_cli.inputs.retry import MAX_RETRY_AFTER_SECONDS, retry_after

    for malformed in ("nan", "inf", "-inf", "-1", "1e9", "0x10", " ", "soon", "١٢"):
        assert retry_after(malformed) is None, malformed
    assert retry_after("7") == 7.0 and retry_after(" 0 ") == 0.0
    assert retry_after("99999") == MAX_RETRY_AFTER_SECONDS == 60.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_a_server_that_sends_a_byte_and_hangs_up_is_given_up_per_block(hub, token, pair, monkeypatch):
    """Progress does not reset the failures: a block whose every answer is one byte and a hang-up is given up
    after ATTEMPTS tries, or sooner when BLOCK_SECONDS have passed since its first failure."""
    from expo_cli.errors import HubError
    from expo_cli.inputs import retry
    from expo_cli.inputs.hub import HubInput, fetch_headers
    from expo_cli.inputs.ranged import RangedSource

    sft, _ = pair
    publish(hub, "org/onebyte", sft, range_faults=1.0, fault_kinds=("onebyte",))
    monkeypatch.setattr(retry, "BACKOFF_SECONDS", (0.01, 0.02))
    retry.new_run()
    remote = fetch_headers(HubInput("org/onebyte", None), "sft")
    info = max(remote.tensors.values(), key=lambda i: i.numel)
    with RangedSource(remote, connections=1) as source, pytest.raises(HubError) as caught:
        source.raw(info, 0, info.numel)
    assert f"org/onebyte/model.safetensors, bytes " in str(caught.value)
    assert "(8 attempts); run again to resume" in str(caught.value)
    assert [kind for kind, *_ in hub.injected] == ["onebyte"] * 8
    monkeypatch.setattr(retry, "BACKOFF_SECONDS", (0.4, 0.4))
    monkeypatch.setattr(retry, "BLOCK_SECONDS", 1.0)
    hub.injected.clear()
    with RangedSource(remote, connections=1) as source, pytest.raises(HubError) as caught:
        source.raw(info, 0, info.numel)
    assert "still failing after 1 s of retries" in str(caught.value) and len(hub.injected) < 8


def test_the_run_waits_at_most_its_retry_budget(tmp_path, expo, hub, token, pair, monkeypatch):
    """A Hub that answers every read with one byte, or asks for a 99999 s Retry-After, ends the run within the budget
    EXPO_RETRY_BUDGET sets: exit 7, one line naming the file and range, no commit."""
    sft, aligned = pair
    publish(hub, "org/budget-sft", sft, range_faults=1.0, fault_kinds=("onebyte", "retry-huge"))
    publish(hub, "org/budget-dpo", aligned)
    hub.create("me/budget")
    refs = dict(hub.repos["me/budget"].refs)
    monkeypatch.setenv("EXPO_RETRY_BUDGET", "3")
    started = time.monotonic()
    run = streamed_merge(expo, "org/budget-sft", "org/budget-dpo", "me/budget", tmp_path, "--alpha", "0.5", "-q")
    lines = run.stderr.strip().splitlines()
    assert run.code == 7 and len(lines) == 1, run.stderr
    assert lines[0].startswith("Error: org/budget-sft/model.safetensors, bytes ") and "retry budget" in lines[0]
    assert "EXPO_RETRY_BUDGET" in lines[0] and time.monotonic() - started < 30
    assert hub.repos["me/budget"].refs == refs
    monkeypatch.setenv("EXPO_RETRY_BUDGET", "soon")
    run = streamed_merge(expo, "org/budget-sft", "org/budget-dpo", "me/budget", tmp_path, "--alpha", "0.5")
    assert run.code == 2 and "EXPO_RETRY_BUDGET='soon': expected a number of seconds" in run.stderr


def test_a_dripping_body_is_cut_and_a_malformed_retry_after_is_ignored(tmp_path, expo, hub, token, pair, monkeypatch):
    """A body arriving a byte at a time is cut at its deadline (the socket timeout alone never fires: a byte comes
    every 0.1 s) and asked for again; `Retry-After: nan` is ignored (backoff instead), not a traceback. The published
    shards are those of a local merge, byte for byte."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setattr(hub, "stall", 60.0)
    sft, aligned = pair
    publish(hub, "org/drip-sft", sft, range_faults=1.0, fault_kinds=("drip", "retry-nan"), most_faults=3)
    publish(hub, "org/drip-dpo", aligned)
    hub.injected.clear()
    shards = ["--alpha", "0.5", "--max-shard-size", "20KB"]
    started = time.monotonic()
    run = streamed_merge(expo, "org/drip-sft", "org/drip-dpo", "me/drip", tmp_path / "scratch", *shards, "-q")
    assert run.code == 0, run.stderr
    assert [kind for kind, *_ in hub.injected] == ["drip", "retry-nan", "drip"]
    assert time.monotonic() - started < 20
    assert_streamed_like_local(tmp_path, expo, "me/drip", sft, aligned, *shards)
