"""The Hub, in and out, against a real HTTP server on 127.0.0.1 (tests/hub_server.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, snapshot_download

from helpers import assert_merged, build_model, certificate, files_of, llama_config, make_pair, read_all, save
from hub_server import READ_TOKEN, WRITE_TOKEN, serve


@pytest.fixture(scope="module")
def local_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubpair")
    sft, aligned = make_pair(root, dtype=torch.bfloat16, aligned_shards="30KB")
    _, aligned_v2 = make_pair(root / "v2", dtype=torch.bfloat16, aligned_shards="40KB")  # same SFT, other DPO run
    return sft, aligned, aligned_v2


def publish(hub, repo_id: str, folder: Path, **flags) -> str:
    return hub.create(repo_id, files_of(folder), **flags)


def test_merge_from_two_repo_ids_at_given_revisions(tmp_path, expo, hub, local_pair, token):
    sft, aligned, aligned_v2 = local_pair
    sft_sha = publish(hub, "org/sft-a", sft)
    publish(hub, "org/dpo-a", aligned)
    repo = hub.repos["org/dpo-a"]
    v2 = repo.commit(files_of(aligned_v2), repo.refs["main"], "second DPO run")
    repo.refs["v2"] = v2
    run = expo(
        "merge",
        "--sft",
        f"org/sft-a@{sft_sha}",
        "--aligned",
        "org/dpo-a",
        "--aligned-revision",
        "v2",
        "-o",
        tmp_path / "out",
        "--alpha",
        "0.5",
    )
    assert run.code == 0, run.stderr
    assert_merged(tmp_path / "out", sft, aligned_v2, 0.5)  # the v2 weights, not main's
    expo_block = json.loads((tmp_path / "out" / "config.json").read_text())["expo"]
    assert expo_block["aligned"]["repo_id"] == "org/dpo-a" and expo_block["aligned"]["revision"] == v2
    assert expo_block["sft"]["repo_id"] == "org/sft-a" and expo_block["sft"]["revision"] == sft_sha
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == ["org/dpo-a", "org/sft-a"] and card.data.base_model_relation == "merge"
    assert (tmp_path / "out" / "chat_template.jinja").read_bytes() == (aligned_v2 / "chat_template.jinja").read_bytes()


def test_inspect_and_verify_take_repo_ids(tmp_path, expo, hub, local_pair, token):
    sft, aligned, _ = local_pair
    publish(hub, "org/sft-i", sft)
    publish(hub, "org/dpo-i", aligned)
    run = expo("inspect", "--sft", "org/sft-i", "--aligned", "org/dpo-i", "--json", "--quiet")
    assert run.code == 0, run.stderr
    assert len(json.loads(run.stdout)["tensors"]) == 21
    assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.5", "-q").code == 0
    assert expo("verify", tmp_path / "out", "--sft", "org/sft-i", "--aligned", "org/dpo-i", "-q").code == 0


def test_dry_run_on_repo_ids_downloads_no_weights(tmp_path, expo, hub, local_pair, token):
    sft, aligned, _ = local_pair
    publish(hub, "org/sft-d", sft)
    publish(hub, "org/dpo-d", aligned)
    hub.requests.clear()
    run = expo(
        "merge",
        "--sft",
        "org/sft-d",
        "--aligned",
        "org/dpo-d",
        "-o",
        tmp_path / "out",
        "--alpha",
        "0.5",
        "--dry-run",
        "--json",
    )
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["tensors"] == 21
    weight_gets = [r for m, p, r in hub.requests if m == "GET" and p.endswith(".safetensors")]
    assert weight_gets and all(r and r.startswith("bytes=") for r in weight_gets)  # headers only
    assert not (tmp_path / "out").exists()


def test_a_mismatched_pair_is_refused_before_any_weight_is_downloaded(tmp_path, expo, hub, local_pair, token):
    _, aligned, _ = local_pair
    other = save(build_model(llama_config(intermediate_size=48), 0), tmp_path / "other", torch.bfloat16)
    publish(hub, "org/other-sft", other)
    publish(hub, "org/dpo-b", aligned)
    hub.requests.clear()
    run = expo("merge", "--sft", "org/other-sft", "--aligned", "org/dpo-b", "-o", tmp_path / "out", "--alpha", "1")
    assert run.code == 4 and "sft BF16[48, 32] vs aligned BF16[64, 32]" in run.stderr
    weight_gets = [(m, p, r) for m, p, r in hub.requests if m == "GET" and p.endswith(".safetensors")]
    assert weight_gets and all(r is not None and r.startswith("bytes=") for _, _, r in weight_gets)  # headers only
    assert not (tmp_path / "out").exists()


def test_push_then_download_back_byte_identical(tmp_path, expo, hub, local_pair, token):
    sft, aligned, _ = local_pair
    run = expo(
        "merge",
        "--sft",
        sft,
        "--aligned",
        aligned,
        "-o",
        tmp_path / "out",
        "--alpha",
        "0.3",
        "--push-to-hub",
        "me/expo-model",
        "--json",
        "--quiet",
    )
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["commit_url"].startswith(os.environ["HF_ENDPOINT"] + "/me/expo-model/commit/")
    back = snapshot_download("me/expo-model", cache_dir=tmp_path / "cache")
    sent, received = files_of(tmp_path / "out"), files_of(Path(back))
    received.pop(".gitattributes")
    assert received == sent


def test_expo_push_private_revision_and_pull_request(tmp_path, expo, hub, local_pair, token, monkeypatch):
    sft, aligned, _ = local_pair
    out = tmp_path / "out"
    assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "0.3", "-q").code == 0
    run = expo("push", out, "me/private-expo", "--private", "--revision", "alpha-0.3", "--commit-message", "α=0.3")
    assert run.code == 0, run.stderr
    repo = hub.repos["me/private-expo"]
    assert repo.private and "alpha-0.3" in repo.refs
    assert set(repo.commits[repo.refs["alpha-0.3"]]) >= set(files_of(out))
    url = run.stdout.strip()
    assert url.endswith(repo.refs["alpha-0.3"])
    monkeypatch.delenv("HF_TOKEN")
    run = expo("merge", "--sft", sft, "--aligned", "me/private-expo@alpha-0.3", "-o", tmp_path / "x", "--alpha", "1")
    assert run.code == 7 and "repository not found (or private" in run.stderr
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    run = expo("push", out, "me/private-expo", "--create-pr")
    assert run.code == 0 and run.stdout.strip().endswith("/discussions/1")


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (
            None,
            ["--aligned", "org/does-not-exist"],
            "org/does-not-exist (no local folder of that name: tried as a Hub repo id): repository not found",
        ),
        ("plain", ["--aligned", "org/err-dpo@no-such-branch"], "revision 'no-such-branch' not found"),
        ("gated", ["--aligned", "org/err-dpo-gated"], "is gated: accept its terms"),
        ("drop", ["--aligned", "org/err-dpo-drop"], "run again to resume"),
    ],
)
def test_hub_input_errors(tmp_path, expo, hub, local_pair, token, setup, args, message):
    sft, aligned, _ = local_pair
    if setup == "plain":
        publish(hub, "org/err-dpo", aligned)
    elif setup == "gated":
        publish(hub, "org/err-dpo-gated", aligned, gated=True)
    elif setup == "drop":
        publish(hub, "org/err-dpo-drop", aligned, drop_downloads=True)
    run = expo("merge", "--sft", sft, *args, "-o", tmp_path / "out", "--alpha", "0.5")
    assert run.code == 7, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_read_only_token_cannot_push_and_the_output_is_kept(tmp_path, expo, local_pair, monkeypatch):
    sft, aligned, _ = local_pair
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    run = expo(
        "merge",
        "--sft",
        sft,
        "--aligned",
        aligned,
        "-o",
        tmp_path / "out",
        "--alpha",
        "0.5",
        "--push-to-hub",
        "me/nope",
        "-q",
    )
    assert run.code == 7 and "set HF_TOKEN to a token with write access" in run.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()  # the local result is kept


def test_connection_lost_mid_upload_then_resumed(monkeypatch, tmp_path, expo, hub, local_pair, token):
    sft, aligned, _ = local_pair
    # huggingface_hub retries each upload for about 23 s, then expo the commit: within a second's budget here
    monkeypatch.setenv("EXPO_RETRY_BUDGET", "1")
    out = tmp_path / "out"
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "0.37", "--max-shard-size", "20KB")
    assert run.code == 0  # weights no other test uploads (the LFS store is shared), in several shards
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    hub.create("me/flaky", uploads_before_drop=1)  # the first shard gets through, then the line goes down
    run = expo("push", out, "me/flaky")
    assert run.code == 7 and "retry budget is spent" in run.stderr.splitlines()[-1], run.stderr
    assert (out / "config.json").exists()  # the local output is kept
    repo = hub.repos["me/flaky"]
    repo.uploads_before_drop = None  # the line is back
    hub.requests.clear()
    run = expo("push", out, "me/flaky")
    assert run.code == 0, run.stderr
    puts = [p for m, p, _ in hub.requests if m == "PUT"]
    assert len(puts) == len(shards) - 1  # the shard uploaded by the first run is not sent again
    files = repo.commits[repo.refs["main"]]
    assert all(files[name] == (out / name).read_bytes() for name in shards)


def test_offline_with_nothing_cached(tmp_path, local_pair):
    sft, _, _ = local_pair
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-home")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "expo_cli",
            "merge",
            "--sft",
            str(sft),
            "--aligned",
            "org/never-cached",
            "-o",
            str(tmp_path / "out"),
            "--alpha",
            "0.5",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 7, proc.stderr
    assert "offline (HF_HUB_OFFLINE=1) and not in the cache" in proc.stderr


def test_offline_uses_the_cache(tmp_path, expo, hub, local_pair, token):
    """After one online run, the same repo ids work with HF_HUB_OFFLINE=1 from the cache."""
    sft, aligned, _ = local_pair
    publish(hub, "org/cached-dpo", aligned)
    assert expo("merge", "--sft", sft, "--aligned", "org/cached-dpo", "-o", tmp_path / "a", "--alpha", "0.5").code == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "expo_cli",
            "merge",
            "--sft",
            str(sft),
            "--aligned",
            "org/cached-dpo",
            "-o",
            str(tmp_path / "b"),
            "--alpha",
            "0.5",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_local_paths_are_never_mistaken_for_repo_ids(tmp_path, expo, local_pair, monkeypatch):
    from expo_cli.inputs.hub import parse_input

    assert parse_input("org/name") is not None and parse_input("org/name@v1").revision == "v1"
    for spec in ("./org/name", "/abs/path", "with space/x", "a+b/c", "dir\\\\sub", "~/models/x", "one-word"):
        assert parse_input(spec) is None, spec
    folder = tmp_path / "org" / "name"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_input("org/name") is None  # an existing folder wins


def test_a_branch_that_moves_between_validation_and_download_is_refused(tmp_path, hub, local_pair, token):
    """The weights downloaded must be the commit whose headers were validated."""
    from expo_cli.errors import HubError
    from expo_cli.inputs import hub as expo_hub
    from expo_cli.inputs.remote import fetch_headers

    _, aligned, aligned_v2 = local_pair
    publish(hub, "org/moving", aligned)
    remote = fetch_headers(expo_hub.HubInput("org/moving", "main"), "aligned")
    repo = hub.repos["org/moving"]
    repo.refs["main"] = repo.commit(files_of(aligned_v2), repo.refs["main"], "pushed meanwhile")
    with pytest.raises(HubError, match="the branch moved during the download; run again"):
        expo_hub.download(remote)


def test_push_reuses_the_merge_sha256s_and_rehashes_what_changed(tmp_path, expo, hub, local_pair, token):
    """The shards are hashed once, while merging; a shard changed since is hashed again, never sent mislabelled
    (the server, like the Hub, refuses an LFS object whose content does not match its sha256)."""
    from expo_cli.merging.upload import upload_operations

    sft, aligned, _ = local_pair
    out = tmp_path / "out"
    assert (
        expo(
            "merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "0.3", "-q", "--max-shard-size", "30KB"
        ).code
        == 0
    )
    recorded = json.loads((out / "config.json").read_text())["expo"]["shards"]
    operations = {op.path_in_repo: op for op in upload_operations(out)}
    assert len(recorded) > 1 and set(recorded) < set(operations)
    for name, sha in recorded.items():
        assert operations[name].upload_info.is_hashed and operations[name].upload_info.sha256.hex() == sha
    assert not operations["config.json"].upload_info.is_hashed  # everything else: hashed by huggingface_hub

    changed = sorted(recorded)[0]
    data = bytearray((out / changed).read_bytes())
    data[-1] ^= 1
    (out / changed).write_bytes(bytes(data))  # after config.json: its recorded sha256 no longer holds
    assert not {op.path_in_repo: op for op in upload_operations(out)}[changed].upload_info.is_hashed
    run = expo("push", out, "me/rehash", "--quiet")
    assert run.code == 0, run.stderr
    back = snapshot_download("me/rehash", cache_dir=tmp_path / "cache")
    assert (Path(back) / changed).read_bytes() == bytes(data)


@pytest.fixture
def small_scratch(tmpfs):
    """A real file system smaller than either input: the streamed merge must never hold an input on it."""
    return tmpfs("96k")


def test_hub_to_hub_streaming_with_a_scratch_smaller_than_an_input(
    tmp_path, expo, hub, local_pair, token, small_scratch
):
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32, aligned_shards="40KB")
    assert min(sum(f.stat().st_size for f in p.glob("*.safetensors")) for p in (sft, aligned)) > 96 * 1024
    publish(hub, "org/stream-sft", sft)
    publish(hub, "org/stream-dpo", aligned)
    hub.requests.clear()
    streamed = ["merge", "--sft", "org/stream-sft", "--aligned", "org/stream-dpo", "--alpha", "0.5", "--stream"]
    streamed += ["--push-to-hub", "me/streamed", "--scratch", small_scratch, "--max-shard-size", "20KB"]
    plan = expo(*streamed, "--dry-run")
    assert plan.code == 0 and "in the scratch folder at most" in plan.stdout, plan.stderr
    run = expo(*streamed)
    assert run.code == 0, run.stderr
    assert run.stdout.strip().startswith(os.environ["HF_ENDPOINT"] + "/me/streamed/commit/")
    weights = [path for method, path, _ in hub.requests if method == "GET" and path.endswith(".safetensors")]
    ranged = [r for m, p, r in hub.requests if m == "GET" and p.endswith(".safetensors") and r]
    assert weights and len(ranged) == len(weights)  # every weight read was a range request: nothing downloaded
    assert list(small_scratch.iterdir()) == []
    local = tmp_path / "local"
    assert (
        expo(
            "merge",
            "--sft",
            sft,
            "--aligned",
            aligned,
            "-o",
            local,
            "--alpha",
            "0.5",
            "-q",
            "--max-shard-size",
            "20KB",
        ).code
        == 0
    )
    back = Path(snapshot_download("me/streamed", cache_dir=tmp_path / "cache"))
    streamed, merged = files_of(back), files_of(local)
    streamed.pop(".gitattributes")
    shards = [name for name in merged if name.endswith(".safetensors")]
    assert set(shards) <= set(streamed), (sorted(streamed), shards)
    assert len(shards) > 2 and all(
        streamed[name] == merged[name] for name in [*shards, "model.safetensors.index.json"]
    )
    config = json.loads(streamed["config.json"])["expo"]
    assert (
        config["aligned"]["repo_id"] == "org/stream-dpo"
        and config["shards"] == json.loads(merged["config.json"])["expo"]["shards"]
    )


def test_a_failed_upload_stops_the_writer_before_the_scratch_fills(tmp_path, expo, hub, token, small_scratch):
    """Uploads fail from the second shard on, after huggingface_hub's retries: the run ends with the upload's error
    (exit 7) having written at most the shard after it. Each block read is a range request, so the tensor bytes read
    count the work: a writer that went on would read (nearly) all a complete run reads for its shards (that is, not
    counting the headers and the reads again that check the inputs' sha256), and fill the scratch folder."""
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32, aligned_shards="40KB")
    publish(hub, "org/fail-sft", sft)
    publish(hub, "org/fail-dpo", aligned)
    # One connection: reads run at most two blocks ahead of the writer, so they still measure how far it went.
    args = ["--sft", "org/fail-sft", "--aligned", "org/fail-dpo", "--max-shard-size", "8KB", "--connections", "1"]

    def tensor_bytes() -> int:  # of the range reads past the headers (which are read from byte 0, then from 8)
        spans = [re.fullmatch(r"bytes=(\d+)-(\d+)", r) for m, p, r in hub.requests if m == "GET" and r]
        return sum(int(m[2]) - int(m[1]) + 1 for m in spans if m and int(m[1]) not in (0, 8))

    hub.create("me/complete")
    hub.requests.clear()
    run = expo(
        "merge", *args, "--alpha", "0.5", "--stream", "--push-to-hub", "me/complete", "--scratch", tmp_path, "--json"
    )
    assert run.code == 0, run.stderr
    walked = tensor_bytes() - json.loads(run.stdout)["network"]["verify_read_bytes"]
    hub.create("me/failing")
    hub.repos["me/failing"].uploads_before_drop = 1
    hub.requests.clear()
    run = expo("merge", *args, "--alpha", "0.6", "--stream", "--push-to-hub", "me/failing", "--scratch", small_scratch)
    assert run.code == 7 and "upload failed" in run.stderr and "disk full" not in run.stderr, run.stderr
    assert tensor_bytes() < 0.85 * walked, (tensor_bytes(), walked)
    assert list(small_scratch.iterdir()) == []


def test_a_streamed_merge_through_network_faults_gives_the_bytes_of_a_local_merge(tmp_path, expo, hub, token):
    """The first eight tensor-data reads of each input fail, two by each kind (resets mid-body, 503, 429 with
    Retry-After, short bodies): each is retried, asking only for the bytes still missing, and the output is the
    local merge's, byte for byte."""
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32, aligned_shards="40KB")
    publish(hub, "org/faulty-sft", sft, range_faults=1.0, most_faults=8)
    publish(hub, "org/faulty-dpo", aligned, range_faults=1.0, most_faults=8)
    hub.injected.clear()
    hub.requests.clear()
    scratch = tmp_path / "scratch"  # missing: created
    shards = ["--alpha", "0.5", "--max-shard-size", "20KB"]
    run = expo(
        "merge",
        "--sft",
        "org/faulty-sft",
        "--aligned",
        "org/faulty-dpo",
        *shards,
        "--stream",
        "--push-to-hub",
        "me/faulty",
        "--scratch",
        scratch,
    )
    assert run.code == 0, run.stderr
    assert {fault[0] for fault in hub.injected} == {"reset", "503", "429", "short"}, hub.injected
    assert scratch.is_dir() and list(scratch.iterdir()) == []
    reads = []
    for method, path, asked in hub.requests:
        if method == "GET" and asked:
            first, last = asked.removeprefix("bytes=").split("-")
            repo, file = path.lstrip("/").split("/resolve/")
            reads.append((f"{repo}/{file.split('/', 1)[1]}", int(first), int(last) + 1))
    for kind, file, start, stop in hub.injected:
        if kind in ("reset", "short"):  # its retry asks only for what did not arrive
            assert any(r[0] == file and start < r[1] < stop and r[2] == stop for r in reads), (kind, file, start, stop)
    local = tmp_path / "local"
    assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", local, *shards, "-q").code == 0
    back = files_of(Path(snapshot_download("me/faulty", cache_dir=tmp_path / "cache")))
    merged = files_of(local)
    written = [name for name in merged if name.endswith(".safetensors") or name.endswith(".index.json")]
    assert len(written) > 3 and all(back[name] == merged[name] for name in written)


def test_read_ahead_stays_within_its_budget_and_serves_the_bytes_of_the_files(tmp_path, hub, local_pair, token):
    from expo_cli.inputs.checkpoint import load_checkpoint
    from expo_cli.inputs.hub import HubInput
    from expo_cli.inputs.ranged import RangedSource
    from expo_cli.inputs.remote import fetch_headers

    _, aligned, _ = local_pair
    publish(hub, "org/ahead", aligned)
    remote = fetch_headers(HubInput("org/ahead", None), "aligned")
    infos = list(remote.tensors.values())
    budget = 3 * max(info.nbytes for info in infos)
    with RangedSource(remote, connections=3, budget=budget) as source, load_checkpoint(aligned, "aligned") as local:
        reserved = []
        for info in infos:  # announce everything: only what fits the budget is read ahead
            source.prefetch(info, 0, info.numel)
            reserved.append(source.reserved_bytes)
        assert 0 < max(reserved) <= budget and reserved[-1] < sum(info.nbytes for info in infos)
        for info in infos:
            assert bytes(source.raw(info, 0, info.numel)) == bytes(local.raw(local.tensors[info.name], 0, info.numel))
        assert source.reserved_bytes == 0 and source.bytes_fetched == sum(info.nbytes for info in infos)


def test_receive_buffers_are_used_again_only_once_nothing_refers_to_them():
    from expo_cli.inputs.ranged import ReceiveBuffers

    buffers = ReceiveBuffers(limit=3 * 2**20)
    first = buffers.take(1000)
    first[:] = b"a" * 1000
    reused = id(first.obj)
    tensor = torch.frombuffer(first[:500], dtype=torch.uint8)  # as `flat` hands a block to the arithmetic
    queued = first[500:]  # as `raw` hands a block to the writer's queue
    del first
    second = buffers.take(1000)
    second[:] = b"b" * 1000
    assert id(second.obj) != reused and bytes(tensor.numpy()) == b"a" * 500 and bytes(queued) == b"a" * 500
    del tensor
    third = buffers.take(1000)  # the queued view still refers to the first buffer
    assert id(third.obj) not in (reused, id(second.obj))
    del queued, second
    fourth = buffers.take(2**20)  # free again, and a whole MiB: big enough
    assert id(fourth.obj) == reused and len(fourth) == 2**20
    held = [buffers.take(2**20) for _ in range(3)]  # beyond the limit: buffers of their own, not kept
    assert buffers.kept_bytes == 3 * 2**20 and all(len(view) == 2**20 for view in held)
    del held, third, fourth
    big = buffers.take(2 * 2**20)  # no kept buffer is big enough: the free ones make room for it
    assert buffers.kept_bytes == 2 * 2**20 and id(big.obj) != reused


def test_a_file_that_keeps_failing_ends_with_exit_7_naming_its_byte_range(tmp_path, expo, hub, token):
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32)
    name = sorted(p.name for p in aligned.glob("*.safetensors"))[0]
    publish(hub, "org/broken-sft", sft)
    publish(hub, "org/broken-dpo", aligned, failing_file=name)
    hub.create("me/never")
    before = dict(hub.repos["me/never"].refs)
    started = time.monotonic()
    run = expo(
        "merge",
        "--sft",
        "org/broken-sft",
        "--aligned",
        "org/broken-dpo",
        "--alpha",
        "0.5",
        "--stream",
        "--push-to-hub",
        "me/never",
        "--scratch",
        tmp_path,
    )
    assert run.code == 7, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    expected = rf"Error: org/broken-dpo/{re.escape(name)}, bytes \d+-\d+: HTTP 503 \(8 attempts\); run again to resume"
    assert re.fullmatch(expected, last), last
    assert time.monotonic() - started < 60  # Retry-After: 0 is honoured: no backoff of its own
    assert hub.repos["me/never"].refs == before and not list(tmp_path.glob(".expo-stream-*"))


def test_a_scratch_folder_whose_parent_is_missing_is_refused_in_one_line(tmp_path, expo, hub, token):
    run = expo(
        "merge",
        "--sft",
        "org/any-sft",
        "--aligned",
        "org/any-dpo",
        "--alpha",
        "0.5",
        "--stream",
        "--push-to-hub",
        "me/any",
        "--scratch",
        tmp_path / "no" / "scratch",
    )
    missing = tmp_path / "no"
    last = run.stderr.strip().splitlines()[-1]
    assert run.code == 5, run.stderr
    assert (
        last == f"Error: --scratch {missing / 'scratch'}: {missing} does not exist; create it or choose another folder"
    )


def test_an_interrupted_stream_commits_nothing_and_resumes(tmp_path, expo, hub, local_pair, token):
    sft, aligned, _ = local_pair
    publish(hub, "org/resume-sft", sft)
    publish(hub, "org/resume-dpo", aligned)
    hub.create("me/resumed")
    repo = hub.repos["me/resumed"]
    before = dict(repo.refs)
    repo.uploads_before_drop = 2
    args = (
        "merge",
        "--sft",
        "org/resume-sft",
        "--aligned",
        "org/resume-dpo",
        "--alpha",
        "0.5",
        "--stream",
        "--push-to-hub",
        "me/resumed",
        "--scratch",
        tmp_path,
        "--max-shard-size",
        "20KB",
    )
    run = expo(*args)
    assert run.code == 7 and "run again to resume" in run.stderr and "Traceback" not in run.stderr
    assert repo.refs == before  # no commit
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".expo-stream-")]
    repo.uploads_before_drop = None
    hub.requests.clear()
    run = expo(*args)
    assert run.code == 0, run.stderr
    puts = [p for m, p, _ in hub.requests if m == "PUT" and p.startswith("/lfs/")]
    shards = json.loads(files_of(Path(snapshot_download("me/resumed", cache_dir=tmp_path / "c")))["config.json"])
    assert len(puts) == len(shards["expo"]["shards"]) - 2  # the two that arrived before the drop are not sent again


def test_quiet_silences_the_hubs_bars_too(tmp_path, expo, hub, local_pair, token):
    sft, aligned, _ = local_pair
    publish(hub, "org/quiet-dpo", aligned)
    run = expo("merge", "--sft", sft, "--aligned", "org/quiet-dpo", "-o", tmp_path / "out", "--alpha", "0.5", "-q")
    assert run.code == 0 and run.stderr == "", run.stderr
    run = expo("merge", "--sft", sft, "--aligned", "org/quiet-dpo", "-o", tmp_path / "o2", "--alpha", "0.5")
    assert run.code == 0 and "Merging" in run.stderr  # and the bars are back for the next command


def assert_streamed_like_local(tmp_path, expo, repo_id: str, sft: Path, aligned: Path, *args: str) -> None:
    """The shards and index a streamed merge published are those of the same merge made locally, byte for byte."""
    local = tmp_path / "local"
    assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", local, *args, "-q").code == 0
    back = files_of(Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache")))
    merged = files_of(local)
    written = [name for name in merged if name.endswith((".safetensors", ".index.json"))]
    inputs = {data for folder in (sft, aligned) for data in files_of(folder).values()}
    assert not {merged[name] for name in written if name.endswith(".safetensors")} & inputs  # extrapolated, not copied
    assert len(written) > 2 and all(back[name] == merged[name] for name in written)


def streamed_merge(expo, sft: str, aligned: str, out: str, scratch: Path, *args: object):
    return expo(
        "merge", "--sft", sft, "--aligned", aligned, "--stream", "--push-to-hub", out, "--scratch", scratch, *args
    )


def test_a_stalled_connection_is_timed_out_and_retried(tmp_path, expo, hub, token, monkeypatch):
    """A connection that goes silent mid-body is given up after HF_HUB_DOWNLOAD_TIMEOUT (not waited on for as long
    as the server holds it) and the rest of the range asked for again."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)  # as HF_HUB_DOWNLOAD_TIMEOUT=0.5 sets it
    monkeypatch.setattr(hub, "stall", 60.0)
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32, aligned_shards="40KB")
    publish(hub, "org/stall-sft", sft, range_faults=1.0, fault_kinds=("stall",), most_faults=2)
    publish(hub, "org/stall-dpo", aligned)
    hub.injected.clear()
    shards = ["--alpha", "0.5", "--max-shard-size", "20KB"]
    started = time.monotonic()
    run = streamed_merge(expo, "org/stall-sft", "org/stall-dpo", "me/stalled", tmp_path / "scratch", *shards, "--json")
    assert run.code == 0, run.stderr
    elapsed = time.monotonic() - started  # each stall given up after 0.5 s, not after the 10 s default or the deadline
    assert elapsed < 15 and [fault[0] for fault in hub.injected] == ["stall", "stall"]
    # what crossed the network: every tensor byte read once (and the block the identical-inputs check samples
    # first), every shard uploaded; and, to check the SFT file's sha256, the bytes the merge used out of its order
    # (its tensors lie in another order than the aligned shards': at most the file once more)
    result = json.loads(run.stdout)
    network = result["network"]
    verified, sft_size = network["verify_read_bytes"], (sft / "model.safetensors").stat().st_size
    assert result["bytes_read"] <= network["read_bytes"] - verified < 1.25 * result["bytes_read"]
    assert 0 < verified <= sft_size
    assert network["upload_bytes"] == result["bytes_written"]
    # from the first range request to the last answer (the hash's re-reads included): most of the run, stalls too
    assert 0.6 * elapsed <= network["read_seconds"] <= elapsed and network["upload_seconds"] > 0
    assert_streamed_like_local(tmp_path, expo, "me/stalled", sft, aligned, *shards)


def test_signed_urls_are_asked_for_again_when_they_expire_and_never_get_the_token(
    tmp_path, expo, hub, token, monkeypatch
):
    """The Hub redirects LFS files to a signed CDN URL on another origin, valid 0.1 s here: ranged reads go there
    directly, without the token, and an expired URL is replaced by asking the Hub again. The progress bar tells
    how fast the link reads and uploads."""
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32, aligned_shards="40KB")
    publish(hub, "org/cdn-sft", sft)
    publish(hub, "org/cdn-dpo", aligned)
    monkeypatch.setattr(hub, "signed_urls", 0.1)
    monkeypatch.setattr(hub, "latency", 0.05)
    hub.cdn_reads.clear()
    hub.requests.clear()
    shards = ["--alpha", "0.5", "--max-shard-size", "20KB"]
    run = streamed_merge(expo, "org/cdn-sft", "org/cdn-dpo", "me/cdn", tmp_path / "scratch", *shards)
    assert run.code == 0, run.stderr
    ranged = [(asked, auth, expired) for asked, auth, expired in hub.cdn_reads if asked]
    assert ranged and all(auth is None for _, auth, _ in hub.cdn_reads)
    assert any(expired for _, _, expired in ranged) and not ranged[-1][2]
    heads = [path for method, path, _ in hub.requests if method == "HEAD" and "/resolve/" in path]
    assert len(heads) > len(set(heads))  # a file located again
    assert re.search(r"reading [\d.]+ [kMG]?B/s, uploading [\d.]+ [kMG]?B/s", run.stderr), run.stderr
    monkeypatch.setattr(hub, "signed_urls", None)
    assert_streamed_like_local(tmp_path, expo, "me/cdn", sft, aligned, *shards)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
def test_ranged_reads_go_through_the_proxy_the_environment_names(tmp_path, expo, hub, token, monkeypatch, variable):
    """HTTP_PROXY, or ALL_PROXY when no proxy is named for the scheme (as huggingface_hub's client reads them)."""
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32, aligned_shards="40KB")
    publish(hub, "org/proxy-sft", sft)
    publish(hub, "org/proxy-dpo", aligned)
    port = os.environ["HF_ENDPOINT"].rsplit(":", 1)[1]
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, f"http://someone:p%40ss@127.0.0.1:{port}")  # this server plays the proxy
    hub.proxied.clear()
    hub.requests.clear()
    shards = ["--alpha", "0.5", "--max-shard-size", "20KB"]
    run = streamed_merge(expo, "org/proxy-sft", "org/proxy-dpo", "me/proxied", tmp_path / "scratch", *shards)
    assert run.code == 0, run.stderr
    # every read of tensor data (the headers were read before, by huggingface_hub's own client)
    ranged = Counter(
        (p, r) for m, p, r in hub.requests if m == "GET" and r and p.endswith(".safetensors") and r[6] != "0"
    )
    credentials = "Basic " + base64.b64encode(b"someone:p@ss").decode()
    proxied = Counter((path, asked) for path, asked, auth in hub.proxied if auth == credentials)
    assert ranged and ranged <= proxied, (ranged, proxied)
    monkeypatch.delenv(variable)
    assert_streamed_like_local(tmp_path, expo, "me/proxied", sft, aligned, *shards)


def test_adjacent_small_blocks_ride_in_one_request_while_the_connections_are_busy(
    tmp_path, hub, local_pair, token, monkeypatch
):
    from expo_cli.inputs.checkpoint import load_checkpoint
    from expo_cli.inputs.hub import HubInput
    from expo_cli.inputs.ranged import RangedSource
    from expo_cli.inputs.remote import fetch_headers

    _, aligned, _ = local_pair
    publish(hub, "org/adjacent", aligned)
    remote = fetch_headers(HubInput("org/adjacent", None), "aligned")
    infos = list(remote.tensors.values())
    files = {info.file for info in infos}
    monkeypatch.setattr(hub, "latency", 0.1)  # the one connection stays busy while the walk announces more
    with RangedSource(remote, connections=1) as source, load_checkpoint(aligned, "aligned") as local:
        hub.requests.clear()
        for info in infos:
            source.prefetch(info, 0, info.numel)
        for info in infos:
            assert bytes(source.raw(info, 0, info.numel)) == bytes(local.raw(local.tensors[info.name], 0, info.numel))
    reads = [asked for method, _, asked in hub.requests if method == "GET" and asked]
    assert len(reads) <= 2 * len(files) < len(infos), (len(reads), len(files), len(infos))


def test_the_commit_that_ends_a_stream_is_made_once_however_its_answers_are_lost(
    tmp_path, expo, hub, local_pair, token
):
    """huggingface_hub retries uploads but not the commit that ends them. Two 503s are waited out (one commit); a Hub
    that keeps refusing ends the run with exit 7 after the retry budget, and no commit. A lost answer (the connection
    dropped, nothing made) is tried again once the refs show it was not made; a commit made and then answered 504
    (or opened as a pull request and answered 504) is found, not made again: one commit, one pull request, exit 0.
    Running a finished publish again makes nothing new and uploads nothing."""
    sft, aligned, _ = local_pair
    endpoint = os.environ["HF_ENDPOINT"]
    publish(hub, "org/commit-sft", sft)
    publish(hub, "org/commit-dpo", aligned)
    hub.create("me/commit-later", commit_failures=2)
    hub.create("me/commit-never", commit_failures=100)
    hub.create("me/lost-answer", commit_drops=1)
    hub.create("me/made-then-504", commits_then_504=1)
    hub.create("me/pr-then-504", commits_then_504=1)
    commits = {repo: len(hub.repos[repo].commits) for repo in hub.repos if repo.startswith("me/")}
    refs = {repo: dict(hub.repos[repo].refs) for repo in hub.repos if repo.startswith("me/")}
    args = ["--alpha", "0.5", "--max-shard-size", "20KB", "-q"]

    def merge_into(repo: str, *more: str):
        return streamed_merge(expo, "org/commit-sft", "org/commit-dpo", repo, tmp_path / "s", *args, *more)

    def uploads() -> int:
        return sum(1 for method, path, _ in hub.requests if method == "PUT" and path.startswith("/lfs/"))

    run = merge_into("me/commit-later")
    assert run.code == 0, run.stderr
    assert len(hub.repos["me/commit-later"].commits) == commits["me/commit-later"] + 1
    assert hub.repos["me/commit-later"].commit_failures == 0
    run = merge_into("me/commit-never")
    last = run.stderr.strip().splitlines()[-1]
    assert run.code == 7 and "upload failed" in last and "503" in last, run.stderr
    assert hub.repos["me/commit-never"].commit_failures == 100 - 8
    assert hub.repos["me/commit-never"].refs == refs["me/commit-never"]
    for repo in ("me/lost-answer", "me/made-then-504"):
        run = merge_into(repo)
        assert run.code == 0, run.stderr
        assert len(hub.repos[repo].commits) == commits[repo] + 1, repo
        assert hub.repos[repo].refs["main"] != refs[repo]["main"]
        assert run.stdout.strip() == f"{endpoint}/{repo}/commit/{hub.repos[repo].refs['main']}"
    assert hub.repos["me/lost-answer"].commit_drops == hub.repos["me/made-then-504"].commits_then_504 == 0
    run = merge_into("me/pr-then-504", "--create-pr")
    assert run.code == 0, run.stderr
    assert [r for r in hub.repos["me/pr-then-504"].refs if r.startswith("refs/pr/")] == ["refs/pr/1"]
    assert run.stdout.strip() == f"{endpoint}/me/pr-then-504/discussions/1"
    sent = uploads()
    head = hub.repos["me/made-then-504"].refs["main"]
    again = merge_into("me/made-then-504")
    assert again.code == 0 and again.stdout.strip().endswith(f"/me/made-then-504/commit/{head}"), again.stderr
    assert len(hub.repos["me/made-then-504"].commits) == commits["me/made-then-504"] + 1 and uploads() == sent
    assert merge_into("me/pr-then-504", "--create-pr").code == 0
    assert [r for r in hub.repos["me/pr-then-504"].refs if r.startswith("refs/pr/")] == ["refs/pr/1"]


def test_a_server_that_answers_another_range_is_refused(tmp_path, expo, hub, token):
    """A range answered from another offset (a broken proxy or CDN) would shift every byte after it: the run ends
    with exit 7 and one line saying so, and publishes nothing."""
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32)
    publish(hub, "org/shifted-sft", sft, range_faults=1.0, fault_kinds=("shifted",), most_faults=1)
    publish(hub, "org/shifted-dpo", aligned)
    hub.create("me/shifted")
    refs = dict(hub.repos["me/shifted"].refs)
    run = streamed_merge(expo, "org/shifted-sft", "org/shifted-dpo", "me/shifted", tmp_path, "--alpha", "0.5")
    last = run.stderr.strip().splitlines()[-1]
    expected = (
        r"Error: org/shifted-sft/model\.safetensors: asked for bytes from (\d+), the server sent from (\d+) \(a proxy "
        r"in the way\?\); set NO_PROXY for the Hub, or merge without --stream"
    )
    assert run.code == 7 and (m := re.fullmatch(expected, last)) and int(m[2]) == int(m[1]) + 1, run.stderr
    assert hub.repos["me/shifted"].refs == refs and not list(tmp_path.glob(".expo-stream-*"))


def test_blocks_announced_beyond_the_budget_are_read_ahead_once_it_has_room(tmp_path, hub, local_pair, token):
    """The budget delays a read ahead, never drops it: once a block is used, the next one announced starts."""
    from expo_cli.inputs.checkpoint import load_checkpoint
    from expo_cli.inputs.hub import HubInput
    from expo_cli.inputs.ranged import RangedSource
    from expo_cli.inputs.remote import fetch_headers

    _, aligned, _ = local_pair
    publish(hub, "org/later", aligned)
    remote = fetch_headers(HubInput("org/later", None), "aligned")
    sizes = Counter(info.nbytes for info in remote.tensors.values())
    size = max(sizes, key=lambda n: (sizes[n], n))
    # four blocks of one size, announced last first: never adjacent in that order, so none ride together
    chosen = sorted((i for i in remote.tensors.values() if i.nbytes == size), key=lambda i: (i.file, -i.offset))[:4]
    assert len(chosen) == 4
    with RangedSource(remote, connections=4, budget=2 * size) as source, load_checkpoint(aligned, "aligned") as local:
        for info in chosen:
            source.prefetch(info, 0, info.numel)
        assert source.reserved_bytes == 2 * size
        time.sleep(0.5)  # both reads done: only using a block makes room for the next
        assert source.reserved_bytes == 2 * size
        for info in chosen:
            assert bytes(source.raw(info, 0, info.numel)) == bytes(local.raw(local.tensors[info.name], 0, info.numel))
            assert source.reserved_bytes == size * min(2, len(chosen) - 1 - chosen.index(info))


def test_a_streamed_merge_over_https_verifies_the_certificate(tmp_path, expo):
    """The Hub is HTTPS: the range reads (our own client, not huggingface_hub's) trust the certificate SSL_CERT_FILE
    names, and give the bytes of a local merge; a Hub whose certificate is not trusted is refused in one line."""
    (cert, context), (other, _) = certificate(tmp_path / "cert"), certificate(tmp_path / "other")
    secure, server = serve(tls=context)
    sft, aligned = make_pair(tmp_path / "pair", dtype=torch.float32, aligned_shards="40KB")
    secure.create("org/tls-sft", files_of(sft))
    secure.create("org/tls-dpo", files_of(aligned))
    secure.create("me/tls")
    env = {
        **os.environ,
        "HF_ENDPOINT": f"https://127.0.0.1:{server.server_address[1]}",
        "HF_TOKEN": WRITE_TOKEN,
        "SSL_CERT_FILE": str(cert),
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    shards = ["--alpha", "0.5", "--max-shard-size", "20KB"]
    command = [sys.executable, "-m", "expo_cli", "merge", "--sft", "org/tls-sft", "--aligned", "org/tls-dpo", *shards]
    command += ["--stream", "--push-to-hub", "me/tls", "--scratch", str(tmp_path / "scratch"), "-q"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    local = tmp_path / "local"
    assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", local, *shards, "-q").code == 0
    published = secure.repos["me/tls"].commits[secure.repos["me/tls"].refs["main"]]
    merged = files_of(local)
    written = [name for name in merged if name.endswith((".safetensors", ".index.json"))]
    assert len(written) > 2 and all(bytes(published[name]) == merged[name] for name in written)
    untrusted = subprocess.run(
        [*command[:-5], "--push-to-hub", "me/tls", "--scratch", str(tmp_path / "scratch"), "-q"],
        env={**env, "SSL_CERT_FILE": str(other)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert untrusted.returncode == 7 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr.strip().splitlines()[-1]
    # that refusal came from huggingface_hub's header fetch: the range client verifies on its own too. Located
    # under the trusted certificate, its reads under another are refused at once (no retry changes a certificate)
    name = sorted(p.name for p in sft.glob("*.safetensors"))[0]
    script = (
        "import os, sys, time\n"
        "from expo_cli.errors import HubError\n"
        "from expo_cli.inputs.range_client import RangeClient\n"
        "repo, sha, name, other = sys.argv[1:]\n"
        "into = memoryview(bytearray(8))\n"
        "RangeClient(repo, sha, None).read_into(name, 0, into)\n"
        "print(int.from_bytes(into, 'little'))\n"
        "client = RangeClient(repo, sha, None)\n"
        "client.locate(name)\n"
        "os.environ['SSL_CERT_FILE'] = other\n"
        "started = time.monotonic()\n"
        "try:\n"
        "    client.read_into(name, 0, into)\n"
        "except HubError as err:\n"
        "    print(round(time.monotonic() - started), err)\n"
    )
    sha = secure.repos["org/tls-sft"].refs["main"]
    alone = subprocess.run(
        [sys.executable, "-c", script, "org/tls-sft", sha, name, str(other)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    header_size = int.from_bytes((sft / name).read_bytes()[:8], "little")
    read, refused = alone.stdout.strip().splitlines()
    assert int(read) == header_size, alone.stderr
    assert refused.startswith("0 ") and "CERTIFICATE_VERIFY_FAILED" in refused and "SSL_CERT_FILE" in refused
    server.shutdown()
