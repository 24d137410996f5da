"""A Hub repo's checkpoint learnt without downloading weights, through the same checks as a local folder.

The commit is resolved once; config.json, the index and every shard's header are read by ranged requests through
the retried client (`range_client.retried`), each small file checked against the hash the Hub lists and within the
size limits of `headers`, and parsed by the very functions that validate a local folder: the index's shard names
are plain file names of the same repo, headers are checked for overlaps and bounds, index and headers must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..constants import CONFIG_NAME, PYTORCH_INDEX_FILE, SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE
from ..core.sources import TensorInfo
from ..errors import HubError, InputError
from .checkpoint import missing_shard, read_weights
from .headers import (
    MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES,
    check_size,
    header_length,
    parse_config,
    parse_index,
    parse_safetensors_header,
)
from .hub import HubInput, RemoteCheckpoint, api, hub_errors
from .integrity import Listed, check_whole
from .range_client import RangeClient, retried

COMMIT = 40  # hex digits of a commit id: what every later request is pinned to


def fetch_headers(source: HubInput, role: str, token: str | None = None) -> RemoteCheckpoint:
    """Resolve the revision to a commit, then read and validate config.json, the index and every shard's header."""
    client = api(token)
    at = f"{source.repo_id}@{source.revision}" if source.revision else source.repo_id
    with hub_errors(source.repo_id, source.revision):
        info = retried(
            lambda: client.model_info(source.repo_id, revision=source.revision, files_metadata=True), f"{at}: info"
        )
    sha = info.sha or ""
    if len(sha) != COMMIT or any(c not in "0123456789abcdef" for c in sha):
        raise HubError(f"{at}: the Hub named no commit for it ({sha!r}); check HF_ENDPOINT and proxies")
    listed = {s.rfilename: _listed(s) for s in info.siblings or []}
    reader = RemoteFiles(source.repo_id, sha, token, listed)
    if CONFIG_NAME not in listed:
        raise InputError(f"--{role} {source.repo_id}: no {CONFIG_NAME} in the repo; not a transformers model")
    config = parse_config(reader.label(CONFIG_NAME), reader.small(CONFIG_NAME, MAX_CONFIG_BYTES))
    headers: dict[Path, bytes] = {}
    if SAFETENSORS_SINGLE_FILE in listed or SAFETENSORS_INDEX_FILE in listed:
        weight_map = None
        if SAFETENSORS_SINGLE_FILE not in listed:
            raw = reader.small(SAFETENSORS_INDEX_FILE, MAX_INDEX_BYTES)
            weight_map = parse_index(reader.label(SAFETENSORS_INDEX_FILE), raw, ".safetensors")
        names = sorted(set(weight_map.values())) if weight_map else [SAFETENSORS_SINGLE_FILE]
        files = [reader.label(name) for name in names]

        def read_header(file: Path) -> tuple[list[TensorInfo], int]:
            name = file.name
            if name not in listed:
                raise missing_shard(file, role)
            prefix = reader.read(name, 0, 8)
            length = header_length(file, prefix, listed[name].size)
            raw = reader.read(name, 8, 8 + length)
            headers[file] = prefix + raw
            return parse_safetensors_header(file, raw, listed[name].size), 8 + length

        tensors, starts = read_weights(reader.root, files, "safetensors", weight_map, role, read_header)
        patterns = [SAFETENSORS_INDEX_FILE, *names]
    elif "pytorch_model.bin" in listed or PYTORCH_INDEX_FILE in listed:
        tensors, starts, patterns = {}, {}, ["pytorch_model*.bin", PYTORCH_INDEX_FILE]
    else:
        raise InputError(f"--{role} {source.repo_id}: no safetensors or pytorch_model.bin weights in the repo")
    return RemoteCheckpoint(
        source.repo_id,
        source.revision,
        sha,
        config,
        tensors,
        patterns,
        listed=listed,
        data_starts=starts,
        headers=headers,
    )


def _listed(sibling: Any) -> Listed:
    lfs = sibling.lfs
    return Listed(
        size=lfs.size if lfs is not None else (sibling.size or 0),
        sha256=lfs.sha256 if lfs is not None else None,
        blob_id=sibling.blob_id,
    )


class RemoteFiles:
    """Small reads of one repo's files at one commit, through the retried range client."""

    def __init__(self, repo_id: str, sha: str, token: str | None, listed: dict[str, Listed]) -> None:
        self.root = Path(repo_id)
        self.listed = listed
        self.client = RangeClient(repo_id, sha, token)

    def label(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str, begin: int, end: int) -> bytes:
        buffer = bytearray(end - begin)
        if buffer:
            self.client.read(name, begin, memoryview(buffer))
        return bytes(buffer)

    def small(self, name: str, limit: int) -> bytes:
        """A whole small file, checked against its listed size limit and hash."""
        size = self.listed[name].size
        check_size(self.label(name), size, limit)
        data = self.read(name, 0, size)
        check_whole(str(self.label(name)), data, self.listed[name])
        return data
