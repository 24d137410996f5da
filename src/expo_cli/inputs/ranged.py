"""Hub to Hub with bounded local disk: inputs read by ranged requests, each output shard uploaded as it closes.

A 405B merge needs 2.4 TB of local disk the ordinary way (both inputs in the Hub cache, and the output). With
`--stream` nothing of the inputs is stored: `RangedSource` is a `TensorSource` that fetches each block it is
asked for with an HTTP range request at the validated commit (the headers were already read that way). The
output shards are written into a scratch folder as usual, and each is uploaded as an LFS object the moment it is
complete (`HfApi.preupload_lfs_files`, with the sha256 computed while writing) and then deleted, so the scratch
folder holds at most the shard being written and the one being uploaded. One commit at the end adds config,
card and side files and points at the uploaded shards: an interrupted run leaves no commit, and running it again
uploads only what the Hub does not have yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..core.sources import TensorInfo, itemsize, torch_dtype
from ..errors import HubError
from .hub import RemoteCheckpoint, hub_errors

if TYPE_CHECKING:
    import torch


class RangedSource:
    """A Hub repo's tensors read block by block with HTTP range requests: a `TensorSource` needing no disk."""

    def __init__(self, remote: RemoteCheckpoint, token: str | None = None) -> None:
        self.remote = remote
        self.path = Path(remote.repo_id)
        self.config = remote.config
        self.tensors = remote.tensors
        self.token = token
        self._starts: dict[Path, int] = {}

    @property
    def readable(self) -> bool:
        return True

    def __enter__(self) -> RangedSource:
        for file in {t.file for t in self.tensors.values()} - set(self._starts):
            self._starts[file] = 8 + int.from_bytes(self._get(file, 0, 8), "little")
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _get(self, file: Path, begin: int, end: int) -> bytes:
        """Bytes [begin, end) of one file of the repo, at the validated commit."""
        # the Hub client loads when the Hub is used
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import (
            build_hf_headers,
            get_session,
            hf_raise_for_status,
        )

        if end <= begin:
            return b""
        name = file.as_posix()[len(self.remote.repo_id) + 1 :]
        url = hf_hub_url(self.remote.repo_id, name, revision=self.remote.sha)
        headers = {**build_hf_headers(token=self.token), "Range": f"bytes={begin}-{end - 1}"}
        with hub_errors(self.remote.repo_id, self.remote.revision):
            response = get_session().get(url, headers=headers, follow_redirects=True)
            hf_raise_for_status(response)
        if len(response.content) != end - begin:
            raise HubError(
                f"{self.remote.repo_id}/{name}: asked for {end - begin} bytes, got {len(response.content)}; run again"
            )
        return response.content

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        size = itemsize(info.dtype)
        begin = self._starts[info.file] + info.offset
        return memoryview(self._get(info.file, begin + start * size, begin + stop * size))

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        import torch  # torch loads on first use, not with the package

        data = bytearray(self.raw(info, start, stop))
        if not data:
            return torch.empty(0, dtype=torch_dtype(info.dtype) if info.is_float else torch.uint8)
        return torch.frombuffer(data, dtype=torch_dtype(info.dtype) if info.is_float else torch.uint8)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Each block is one request when asked for; nothing to start early."""
