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

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import HubError
from .hub import RemoteCheckpoint, hub_errors
from .sources import TensorInfo, itemsize, torch_dtype

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
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        if end <= begin:
            return b""
        name = file.as_posix()[len(self.remote.repo_id) + 1 :]
        url = hf_hub_url(self.remote.repo_id, name, revision=self.remote.sha)
        headers = {**build_hf_headers(token=self.token), "Range": f"bytes={begin}-{end - 1}"}
        with hub_errors(self.remote.repo_id, self.remote.revision):
            response = get_session().get(url, headers=headers, follow_redirects=True)
            hf_raise_for_status(response)
        if len(response.content) != end - begin:
            raise HubError(f"{self.remote.repo_id}/{name}: asked for {end - begin} bytes, got "
                           f"{len(response.content)}; run again")  # fmt: skip
        return response.content

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        size = itemsize(info.dtype)
        begin = self._starts[info.file] + info.offset
        return memoryview(self._get(info.file, begin + start * size, begin + stop * size))

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        import torch

        data = bytearray(self.raw(info, start, stop))
        if not data:
            return torch.empty(0, dtype=torch_dtype(info.dtype) if info.is_float else torch.uint8)
        return torch.frombuffer(data, dtype=torch_dtype(info.dtype) if info.is_float else torch.uint8)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Each block is one request when asked for; nothing to start early."""


class Uploader:
    """Uploads each finished shard as an LFS object on a thread of its own, then deletes the local file."""

    def __init__(self, repo_id: str, revision: str | None, create_pr: bool, token: str | None,
                 say: Callable[[str], None]) -> None:  # fmt: skip
        from .hub import api

        self.client = api(token)
        self.repo_id, self.revision, self.create_pr, self.say = repo_id, revision, create_pr, say
        self.operations: list[Any] = []
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="expo-uploader", daemon=True)
        self._thread.start()

    def shard_closed(self, path: Path, sha256: str) -> None:
        """Queue a complete shard (called on the hashing thread). After a failed upload, raise it there: the
        writer then stops, instead of filling the scratch folder with shards that will never leave."""
        if self._error is not None:
            raise self._error
        self._queue.put((path, sha256))

    def _run(self) -> None:
        from huggingface_hub import CommitOperationAdd

        while (item := self._queue.get()) is not None:
            path, sha256 = item
            if self._error is not None:
                continue
            try:
                operation = CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
                operation.upload_info.sha256 = bytes.fromhex(sha256)
                with hub_errors(self.repo_id, self.revision, action="upload"):
                    self.client.preupload_lfs_files(self.repo_id, [operation], revision=self.revision,
                                                    create_pr=self.create_pr)  # fmt: skip
                path.unlink()
                self.operations.append(operation)
                self.say(f"uploaded {path.name}")
            except BaseException as err:  # noqa: BLE001 - raised on the main thread by close()
                self._error = err

    def close(self) -> list[Any]:
        """Wait for every upload; return the operations for the commit (or raise the first upload error)."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.operations
