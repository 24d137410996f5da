"""A Hub, CDN or proxy that misbehaves on purpose: no server holds a run, tampers with what is published, or gets
a commit made twice. Each case ends in success with the right bytes, or in one line and exit 7 with nothing
committed."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import certificate, files_of, make_pair
from hub_server import WRITE_TOKEN, serve
from test_hub import assert_streamed_like_local, publish, streamed_merge


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("hostile"), dtype=torch.float32, aligned_shards="40KB")


def test_retry_after_is_read_strictly_and_capped():
    from expo_cli.inputs.retry import MAX_RETRY_AFTER_SECONDS, retry_after

    for malformed in ("nan", "inf", "-inf", "-1", "1e9", "0x10", " ", "soon", "١٢"):
        assert retry_after(malformed) is None, malformed
    assert retry_after("7") == 7.0 and retry_after(" 0 ") == 0.0
    assert retry_after("99999") == retry_after("9" * 400) == MAX_RETRY_AFTER_SECONDS == 60.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
    assert retry_after(email.utils.formatdate(time.time() + 3600, usegmt=True)) == 60.0  # an hour ahead: capped


def test_a_server_that_sends_a_byte_and_hangs_up_is_given_up_per_block(hub, token, pair, monkeypatch):
    """A byte of progress does not reset the failures: a block whose every answer is one byte and a hang-up is given
    up after ATTEMPTS tries, or sooner when BLOCK_SECONDS have passed since its first failure."""
    from expo_cli.errors import HubError
    from expo_cli.inputs import retry
    from expo_cli.inputs.hub import HubInput
    from expo_cli.inputs.ranged import RangedSource
    from expo_cli.inputs.remote import fetch_headers

    sft, _ = pair
    publish(hub, "org/onebyte", sft, range_faults=1.0, fault_kinds=("onebyte",))
    monkeypatch.setattr(retry, "BACKOFF_SECONDS", (0.01, 0.02))
    retry.new_run()
    hub.injected.clear()
    remote = fetch_headers(HubInput("org/onebyte", None), "sft")
    info = max(remote.tensors.values(), key=lambda i: i.numel)
    with RangedSource(remote, connections=1) as source, pytest.raises(HubError) as caught:
        source.raw(info, 0, info.numel)
    assert "org/onebyte/model.safetensors, bytes " in str(caught.value)
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


@pytest.mark.parametrize(
    ("flipped", "file"),
    [("sft", "org/flip-sft-sft/model.safetensors"), ("dpo", "org/flip-dpo-dpo/model-00001-of-00003")],
)
def test_bytes_changed_on_the_way_are_caught_before_the_commit(tmp_path, expo, hub, token, pair, flipped, file):
    """One bit flipped in one range answer (well-formed otherwise, as a plain-HTTP hop could do) is caught before the
    commit, whichever input it hits: exit 7 and one line naming the file, nothing committed. (A block read once fails
    the file's sha256; one read twice, as blocks used out of order and the identical-inputs check's are, fails the
    comparison of the two reads: see the FileDigest tests.)"""
    sft, aligned = pair
    faults = {"range_faults": 1.0, "fault_kinds": ("flip",), "most_faults": 1}
    sft_repo, dpo_repo, out = f"org/flip-{flipped}-sft", f"org/flip-{flipped}-dpo", f"me/flip-{flipped}"
    publish(hub, sft_repo, sft, **(faults if flipped == "sft" else {}))
    publish(hub, dpo_repo, aligned, **(faults if flipped == "dpo" else {}))
    hub.create(out)
    refs = dict(hub.repos[out].refs)
    hub.injected.clear()
    run = streamed_merge(expo, sft_repo, dpo_repo, out, tmp_path, "--alpha", "0.5", "-q")
    lines = run.stderr.strip().splitlines()
    assert run.code == 7 and len(lines) == 1 and lines[0].startswith(f"Error: {file}"), run.stderr
    assert "the bytes read do not match the sha256" in lines[0] or "sent different bytes for the same" in lines[0]
    assert "nothing was published" in lines[0]
    assert [kind for kind, *_ in hub.injected] == ["flip"] and hub.repos[out].refs == refs


def _digest(data: bytes, lfs: bool = True):
    from expo_cli.inputs.integrity import FileDigest, Listed

    sha = hashlib.sha256(data).hexdigest() if lfs else None
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return FileDigest("org/x/f.safetensors", Listed(len(data), sha, blob))


@pytest.mark.parametrize("lfs", [True, False])
def test_a_file_digest_fed_in_any_order_checks_exactly_the_bytes_used(lfs):
    """Constructed data, every feeding order of its blocks: the digest accepts the true bytes, reading again exactly
    the blocks used out of order; a changed byte in a block read once fails the file's hash; a block whose second
    read differs from its first is named."""
    from expo_cli.errors import HubError

    data = bytes(range(256)) * 40  # 10240 bytes
    blocks = [(0, 1000), (1000, 4096), (4096, 4100), (4100, 9000), (9000, 10240)]
    # the order blocks are used in -> the blocks read again: exactly those used ahead of the hash's position
    expected = {
        (0, 1, 2, 3, 4): [],
        (0, 3, 1, 2, 4): [blocks[3], blocks[4]],
        (4, 3, 2, 1, 0): blocks[1:],
        (2, 0, 1, 2, 3, 4, 1): [],  # block 2 used early, then again in order: its two reads compared, none again
    }
    for order, again in expected.items():
        digest, reread = _digest(data, lfs), []
        for i in order:
            digest.feed(blocks[i][0], data[slice(*blocks[i])])
        digest.finish(lambda begin, end, reread=reread: reread.append((begin, end)) or data[begin:end])
        assert reread == again, order
    tampered = bytearray(data)
    tampered[5000] ^= 1
    digest = _digest(data, lfs)
    for begin, end in blocks:
        digest.feed(begin, tampered[begin:end])
    with pytest.raises(HubError, match=r"^org/x/f\.safetensors: the bytes read do not match the (sha256|git blob id)"):
        digest.finish(lambda begin, end: data[begin:end])
    digest = _digest(data, lfs)
    early = bytearray(data[4096:4100])
    early[1] ^= 1
    digest.feed(4096, bytes(early))  # used ahead of its turn, with a changed byte
    digest.feed(0, data[0:1000])
    digest.feed(1000, data[1000:4096])
    with pytest.raises(HubError, match=r"bytes 4096-4099: the server sent different bytes for the same range"):
        digest.feed(4000, data[4000:4100])  # then in order, covering it: the two reads are compared
    digest = _digest(data, lfs)
    digest.feed(4100, tampered[4100:9000])  # used out of order with a changed byte, read again as it should be
    for begin, end in blocks:
        if begin != 4100:
            digest.feed(begin, data[begin:end])
    with pytest.raises(HubError, match=r"bytes 4100-8999: the server sent different bytes for the same range"):
        digest.finish(lambda begin, end: data[begin:end])


def test_an_answer_that_names_no_commit_is_refused(tmp_path, expo, hub, token, pair):
    sft, aligned = pair
    publish(hub, "org/unpinned-sft", sft, unpinned=True)
    publish(hub, "org/unpinned-dpo", aligned)
    hub.create("me/unpinned")
    run = streamed_merge(expo, "org/unpinned-sft", "org/unpinned-dpo", "me/unpinned", tmp_path, "--alpha", "0.5")
    last = run.stderr.strip().splitlines()[-1]
    assert run.code == 7 and "org/unpinned-sft/config.json: the Hub answered for commit (none named)" in last


def _safetensors(header: object, data: bytes, length: int | None = None) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + data


def _assert_same_verdict(tmp_path_factory, hub, files: dict[str, bytes]) -> str:
    """The same files as a local folder and as a Hub repo: refused with the same message, or both accepted."""
    from expo_cli.inputs.checkpoint import load_checkpoint
    from expo_cli.inputs.hub import HubInput
    from expo_cli.inputs.remote import fetch_headers

    folder = tmp_path_factory.mktemp("checkpoint")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    named = hashlib.sha1(b"\0".join(name.encode() + b"=" + data for name, data in sorted(files.items())))
    repo = f"org/v-{named.hexdigest()[:16]}"  # hypothesis may draw the same files again: one repo for them
    if repo not in hub.repos:
        hub.create(repo, files)
    local = _verdict(lambda: load_checkpoint(folder, "sft"), str(folder))
    remote = _verdict(lambda: fetch_headers(HubInput(repo, None), "sft"), repo)
    assert remote == local
    return local


def test_the_verdict_comparison_tells_a_refusal_from_an_acceptance(tmp_path_factory, hub, token):
    """The properties below compare verdicts: they prove something only if a good file and a bad one get different
    ones, on both paths."""
    config = b'{"model_type": "llama"}'
    good = _safetensors(_f32((0, 8)), b"\1" * 8)
    gapped = _safetensors(_f32((4, 12)), b"\1" * 12)
    assert _assert_same_verdict(tmp_path_factory, hub, {"config.json": config, "model.safetensors": good}) == "ok"
    refused = _assert_same_verdict(tmp_path_factory, hub, {"config.json": config, "model.safetensors": gapped})
    assert refused == "InputError: <file>/model.safetensors: tensor 't0' leaves a gap before it; the file is corrupt"


def _verdict(load, label: str) -> str:
    """ "ok", or the error's message with the file's name in place of where it is."""
    from expo_cli.errors import ExpoError

    try:
        load()
    except ExpoError as err:
        return f"{type(err).__name__}: {str(err).replace(label, '<file>')}"
    return "ok"


DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "F64": 8}


@st.composite
def headers(draw):
    """A safetensors file as a hostile uploader might make it: tensors whose offsets may overlap, leave gaps, or
    disagree with their shapes; metadata of the wrong type; data shorter or longer; a length prefix that lies."""
    names = draw(st.lists(st.sampled_from(["a", "b", "c.weight", "d"]), min_size=0, max_size=4, unique=True))
    header: dict[str, object] = {}
    end = 0
    for name in names:
        dtype = draw(st.sampled_from([*DTYPES, "Q4"]))
        shape = draw(st.lists(st.integers(0, 3), max_size=2))
        size = DTYPES.get(dtype, 1) * int(torch.tensor(shape).prod()) if shape else DTYPES.get(dtype, 1)
        begin = max(0, end + draw(st.sampled_from([0, 0, 0, -2, 4])))
        stop = begin + size + draw(st.sampled_from([0, 0, 0, 2, -1]))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, stop]}
        end = max(end, stop)
    metadata = draw(st.sampled_from([None, {"format": "pt"}, {"format": 1}, ["pt"]]))
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b"\x01" * max(0, end + draw(st.sampled_from([0, 0, -3, 5])))
    length = draw(st.sampled_from([None, None, None, 10**6, 2]))
    return _safetensors(header, data, length)


def _f32(*spans: tuple[int, int]) -> dict:
    return {
        f"t{i}": {"dtype": "F32", "shape": [(e - b) // 4], "data_offsets": [b, e]} for i, (b, e) in enumerate(spans)
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=headers())
@example(raw=_safetensors(_f32((4, 12)), b"\1" * 12))  # a gap before the first tensor
@example(raw=_safetensors(_f32((0, 8), (12, 16)), b"\1" * 16))  # a gap between two
@example(raw=_safetensors(_f32((0, 8)), b"\1" * 12))  # bytes after the last
@example(raw=_safetensors(_f32((0, 8), (4, 12)), b"\1" * 12))  # an overlap
@example(raw=_safetensors({"__metadata__": {"format": 1}, **_f32((0, 8))}, b"\1" * 8))  # metadata not strings
def test_remote_headers_get_the_verdict_of_local_ones(tmp_path_factory, hub, token, raw):
    """Random, truncated, overlapping and gapped safetensors headers: a Hub repo is refused, or accepted, exactly as
    the same files in a local folder are, with the same message."""
    _assert_same_verdict(tmp_path_factory, hub, {"config.json": b'{"model_type": "llama"}', "model.safetensors": raw})


@pytest.mark.parametrize(
    "shard",
    [
        "../../other/private/resolve/main/model.safetensors",
        "/etc/model.safetensors",
        "sub/model.safetensors",
        "..\\model.safetensors",
        "model.bin",
    ],
)
def test_an_index_naming_files_outside_the_repo_is_refused_before_any_request_for_them(
    tmp_path, expo, hub, token, pair, shard
):
    """The shard names of a Hub repo's index are held to the local rule (plain file names of the same repo): the
    token is never sent to another repo's path."""
    _, aligned = pair
    files = files_of(aligned)
    index = json.loads(files["model.safetensors.index.json"])
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    hub.create("org/traversal", files)
    hub.requests.clear()
    run = expo("merge", "--sft", "org/traversal", "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "1")
    last = run.stderr.strip().splitlines()[-1]
    assert run.code == 3 and "which is not a plain .safetensors file name" in last and repr(shard) in last
    assert not any("other" in path or path.endswith(shard) for _, path, _ in hub.requests)
    assert not (tmp_path / "out").exists()


def test_oversized_config_and_index_are_refused_from_the_listing(tmp_path, expo, hub, token, pair):
    """A 17 MB config.json (the limit is 16 MiB) is refused from the size the Hub lists: nothing of it is read.
    The same file in a local folder gets the same refusal."""
    sft, aligned = pair
    files = files_of(aligned)
    files["config.json"] = files["config.json"].rstrip(b"}") + b" " * 17_000_000 + b"}"
    hub.create("org/huge-config", files)
    hub.requests.clear()
    run = expo("merge", "--sft", sft, "--aligned", "org/huge-config", "-o", tmp_path / "out", "--alpha", "1")
    last = run.stderr.strip().splitlines()[-1]
    assert run.code == 3 and "org/huge-config/config.json: 17" in last and "more than such a file may be" in last
    assert not any(path.endswith("config.json") for _, path, _ in hub.requests)
    local = tmp_path / "local"
    local.mkdir()
    for name, data in files.items():
        (local / name).write_bytes(data)
    run = expo("merge", "--sft", sft, "--aligned", local, "-o", tmp_path / "out", "--alpha", "1")
    assert run.code == 3 and "config.json: 17" in run.stderr and "more than such a file may be" in run.stderr


def test_an_https_proxy_is_spoken_to_over_tls_with_its_credentials(tmp_path, expo, hub, pair):
    """HTTP_PROXY=https://user:pass@proxy: every request, the range reads included, reaches the proxy over TLS (its
    certificate verified against SSL_CERT_FILE) with the credentials in Proxy-Authorization; nothing reaches the Hub
    around it; the shards published are those of a local merge. A second test Hub serving TLS plays the proxy (it
    answers from the same repos). In a process of its own: huggingface_hub keeps the clients it made."""
    sft, aligned = pair
    cert, context = certificate(tmp_path / "proxy")
    proxy, server = serve(tls=context)
    for holder in (hub, proxy):
        publish(holder, "org/tls-proxy-sft", sft)
        publish(holder, "org/tls-proxy-dpo", aligned)
    proxy.create("me/tls-proxied")
    hub.requests.clear()
    environment = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environment |= {
        "HTTP_PROXY": f"https://someone:p%40ss@127.0.0.1:{server.server_address[1]}",
        "SSL_CERT_FILE": str(cert),
        "HF_TOKEN": WRITE_TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    shards = ["--alpha", "0.5", "--max-shard-size", "20KB"]
    command = [sys.executable, "-m", "expo_cli", "merge", "--sft", "org/tls-proxy-sft", "--aligned"]
    command += [
        "org/tls-proxy-dpo",
        *shards,
        "--stream",
        "--push-to-hub",
        "me/tls-proxied",
        "--scratch",
        tmp_path / "s",
    ]
    run = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    credentials = "Basic " + base64.b64encode(b"someone:p@ss").decode()
    data = [path for path, asked, _ in proxy.proxied if asked and asked[6] != "0" and path.endswith(".safetensors")]
    assert data and all(auth == credentials for _, _, auth in proxy.proxied)
    assert not [path for _, path, _ in hub.requests if "tls-prox" in path]
    local = tmp_path / "local"
    assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", local, *shards, "-q").code == 0
    published = proxy.repos["me/tls-proxied"].commits[proxy.repos["me/tls-proxied"].refs["main"]]
    merged = files_of(local)
    written = [name for name in merged if name.endswith((".safetensors", ".index.json"))]
    assert len(written) > 2 and all(bytes(published[name]) == merged[name] for name in written)
    server.shutdown()


def test_downloaded_weights_are_checked_against_the_listed_sha256_once(tmp_path, expo, hub, token, pair):
    """huggingface_hub checks a download's size only: expo hashes each downloaded weight file once (shown as
    "Checking sha256"), remembers it while the cached blob is unchanged, and refuses a blob whose bytes changed
    (a byte flipped on the way or on the disk): exit 7 naming the file and what to delete, no output."""
    sft, aligned = pair
    publish(hub, "org/checked-sft", sft)
    publish(hub, "org/checked-dpo", aligned)
    args = ["--sft", "org/checked-sft", "--aligned", "org/checked-dpo", "--alpha", "0.5"]
    first = expo("merge", *args, "-o", tmp_path / "first")
    assert first.code == 0 and "Checking sha256" in first.stderr, first.stderr
    second = expo("merge", *args, "-o", tmp_path / "second")
    assert second.code == 0 and "Checking sha256" not in second.stderr, second.stderr
    cache = Path(os.environ["HF_HOME"]) / "hub" / "models--org--checked-dpo"
    (shard,) = list((cache / "snapshots").rglob("model-00002-of-*.safetensors"))
    blob = shard.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    run = expo("merge", *args, "-o", tmp_path / "third")
    last = run.stderr.strip().splitlines()[-1]
    assert run.code == 7 and last == (
        f"Error: {shard}: the downloaded bytes do not match the sha256 the Hub lists ({blob.name[:12]}…); "
        f"delete {blob} and run again"
    ), run.stderr
    assert not (tmp_path / "third").exists()


def test_a_commit_never_lands_on_top_of_one_made_meanwhile(tmp_path, expo, hub, token, pair):
    """Another writer commits to the branch while the run uploads: the run's commit names the head it built on, so
    the Hub refuses it rather than stacking it silently: exit 7 and one line, the other commit stays the head; running
    again commits on top of it, knowingly."""
    sft, aligned = pair
    publish(hub, "org/race-sft", sft)
    publish(hub, "org/race-dpo", aligned)
    hub.create("me/raced", raced_commits=1)
    args = ["--alpha", "0.5", "-q"]
    run = streamed_merge(expo, "org/race-sft", "org/race-dpo", "me/raced", tmp_path, *args)
    lines = run.stderr.strip().splitlines()
    assert run.code == 7 and lines == [
        "Error: me/raced@main: another commit landed on the branch while this run uploaded; nothing was committed: "
        "run again to commit on top of it"
    ], run.stderr
    repo = hub.repos["me/raced"]
    assert set(repo.commits[repo.refs["main"]]) == {".gitattributes", "NOTES.md"}
    assert streamed_merge(expo, "org/race-sft", "org/race-dpo", "me/raced", tmp_path, *args).code == 0
    assert {"NOTES.md", "config.json"} <= set(repo.commits[repo.refs["main"]])


def stream_through_a_tls_hub(tmp_path: Path, pair, name: str, cdn_scheme: str):
    """`expo merge --stream --push-to-hub` against an HTTPS test Hub whose LFS files redirect to
    `cdn_scheme`://localhost (its certificate names 127.0.0.1 only); (the run, the Hub, its port)."""
    sft, aligned = pair
    cert, context = certificate(tmp_path / "hub")
    secure, server = serve(tls=context)
    secure.create(f"org/{name}-sft", files_of(sft))
    secure.create(f"org/{name}-dpo", files_of(aligned))
    secure.create(f"me/{name}")
    secure.signed_urls, secure.cdn_scheme = 600.0, cdn_scheme
    environment = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environment |= {
        "HF_ENDPOINT": f"https://127.0.0.1:{server.server_address[1]}",
        "HF_TOKEN": WRITE_TOKEN,
        "SSL_CERT_FILE": str(cert),
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    command = [sys.executable, "-m", "expo_cli", "merge", "--sft", f"org/{name}-sft", "--aligned"]
    command += [f"org/{name}-dpo", "--alpha", "0.5", "--stream", "--push-to-hub", f"me/{name}", "-q"]
    try:
        run = subprocess.run(command + ["--scratch", tmp_path / "s"], env=environment, capture_output=True, text=True)
    finally:
        server.shutdown()
    return run, secure, server.server_address[1]


def test_a_redirect_from_https_to_http_is_refused(tmp_path, pair):
    """An HTTPS Hub whose LFS redirect points to a plain-HTTP URL: the weights would cross the network unencrypted
    (and could be changed on the way), so the run ends with exit 7 and one line before reading a byte of them."""
    run, secure, _ = stream_through_a_tls_hub(tmp_path, pair, "downgrade", "http")
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 7 and len(lines) == 1, run.stderr
    assert lines[0].startswith("Error: org/downgrade-")
    assert "the Hub redirected an https request to http://localhost; refusing to read weights over" in lines[0]
    assert not any(asked for asked, _, _ in secure.cdn_reads)
    assert len(secure.repos["me/downgrade"].commits) == 1


def test_a_certificate_for_another_host_name_is_refused(tmp_path, pair):
    """The CDN URL names localhost; the certificate the server presents is for 127.0.0.1 only. Trusted authority,
    wrong name: the range reads refuse it (exit 7, one line) rather than send the request."""
    run, secure, port = stream_through_a_tls_hub(tmp_path, pair, "misnamed", "https")
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 7 and len(lines) == 1, run.stderr
    assert f"localhost:{port}: its certificate is not trusted (" in lines[0]
    assert "Hostname mismatch" in lines[0] or "IP address mismatch" in lines[0] or "hostname" in lines[0].lower()
    assert not secure.cdn_reads and len(secure.repos["me/misnamed"].commits) == 1


def test_the_token_goes_only_to_the_hubs_own_scheme_host_and_port():
    """A URL elsewhere is read as signed, without the token: another host, and also the same host over plain
    http:// (the token would travel in clear) or on another port (another service)."""
    from expo_cli.inputs.range_client import same_origin

    hub = "https://hub.example/org/model/resolve/0123/model.safetensors"
    assert same_origin(hub, "https://hub.example/api/other")
    assert same_origin("http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b")
    for elsewhere in ("http://hub.example/x", "https://hub.example:8443/x", "https://cdn.hub.example/x"):
        assert not same_origin(hub, elsewhere), elsewhere


def test_a_small_file_is_checked_whole_against_its_listed_hash():
    """config.json and the index are checked against the git blob id (or sha256) the Hub lists, and their size."""
    from expo_cli.errors import HubError
    from expo_cli.inputs.integrity import Listed, check_whole

    data = b'{"model_type": "llama"}'
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    check_whole("org/x/config.json", data, Listed(len(data), None, blob))
    check_whole("org/x/config.json", data, Listed(len(data), hashlib.sha256(data).hexdigest(), "pointer id"))
    for changed, listed in (
        (data.replace(b"llama", b"llamb"), Listed(len(data), None, blob)),
        (data + b" ", Listed(len(data), None, blob)),
        (data, Listed(len(data), None, None)),
    ):
        with pytest.raises(HubError, match=r"^org/x/config\.json: "):
            check_whole("org/x/config.json", changed, listed)


def test_proxy_urls_are_read_as_the_ecosystem_reads_them(monkeypatch):
    """An https:// proxy without a port is on 443 (not 80), one without a scheme is http://, NO_PROXY is honoured, and
    a SOCKS proxy (which range reads do not speak) is refused in one line rather than bypassed."""
    from expo_cli.errors import HubError
    from expo_cli.inputs.range_client import RangeClient

    for name in ("NO_PROXY", "no_proxy", "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    client = RangeClient("org/x", "0" * 40, None)
    monkeypatch.setenv("HTTPS_PROXY", "https://someone:secret@proxy.example")
    manager = client._manager("https://hub.example/org/x/resolve/main/model.safetensors")
    assert (manager.proxy.scheme, manager.proxy.host, manager.proxy.port) == ("https", "proxy.example", 443)
    assert manager.proxy_headers["proxy-authorization"] == "Basic " + base64.b64encode(b"someone:secret").decode()
    assert "secret" not in str(manager.proxy)  # the credentials travel in the header to the proxy only
    monkeypatch.setenv("HTTP_PROXY", "proxy.example:3128")
    manager = client._manager("http://hub.example/org/x")
    assert (manager.proxy.scheme, manager.proxy.port) == ("http", 3128)
    monkeypatch.setenv("NO_PROXY", "hub.example")
    assert client._manager("https://hub.example/x") is client._manager("http://hub.example/x")  # direct, both
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv("ALL_PROXY", "socks5://proxy.example:1080")
    with pytest.raises(HubError, match=r"^socks5:// proxies are not supported for range reads; name an http:// or"):
        client._manager("https://hub.example/x")


INDEX_NAMES = [
    "model-00001-of-00001.safetensors",
    "../model-00001-of-00001.safetensors",
    "/abs.safetensors",
    "sub/x.safetensors",
    "missing.safetensors",
    "model.bin",
    "a\\\\b.safetensors",
    "",
]


@st.composite
def indexes(draw):
    """A weight index as a hostile uploader might write it: shard names that climb out, are absolute, name another
    format or a file that is not there; tensors the shard does not hold; no weight_map; not JSON."""
    shape = draw(st.sampled_from(["good", "good", "no map", "not json", "list"]))
    if shape == "not json":
        return b"{weight_map"
    if shape == "list":
        return b"[]"
    if shape == "no map":
        return json.dumps({"metadata": {}}).encode()
    weight_map = {name: draw(st.sampled_from(INDEX_NAMES[:1] * 4 + INDEX_NAMES)) for name in ("a", "b")}
    if draw(st.booleans()):
        weight_map["c"] = draw(st.sampled_from(INDEX_NAMES))  # a tensor the shard does not hold
    return json.dumps({"metadata": {}, "weight_map": weight_map}).encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=indexes())
def test_remote_indexes_get_the_verdict_of_local_ones(tmp_path_factory, hub, token, index):
    """Random and hostile index files: a Hub repo is refused, or accepted, exactly as the same files in a local
    folder are, with the same message."""

    shard = _safetensors(
        {
            "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        b"\0" * 8,
    )
    files = {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors.index.json": index,
        "model-00001-of-00001.safetensors": shard,
    }
    _assert_same_verdict(tmp_path_factory, hub, files)
