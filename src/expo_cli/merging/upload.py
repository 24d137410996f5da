"""Publishing to the Hugging Face Hub: an output folder in one commit, or shards uploaded as they close.

`push` uploads a finished folder (reusing the sha256 of every shard the merge computed while writing it).
With `--stream` an `Uploader` sends each output shard as an LFS object the moment it is complete and deletes it,
so the scratch folder holds at most the shard being written and the one being uploaded; one commit at the end
adds config, card and side files and points at the uploaded shards.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

from ..constants import CONFIG_NAME, REPO_ID, VERSION
from ..core import profile as profiling
from ..errors import HubError, InputError
from ..inputs import retry
from ..inputs.hub import api, hub_errors, network_cause


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> str:
    """Upload a finished output folder in one commit; return the commit (or pull request) URL.

    Running it again after a lost connection resumes: files the Hub already holds are not sent again.
    """
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise InputError(f"{folder}: not a model folder (no {CONFIG_NAME}); push the output of expo merge")
    prepare_repo(repo_id, private=private, revision=revision, create_pr=create_pr, token=token)
    return commit(
        repo_id,
        upload_operations(folder),
        revision=revision,
        create_pr=create_pr,
        token=token,
        message=commit_message or f"Upload {folder.name} made with expo {VERSION}",
    )


def prepare_repo(
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> None:
    """The target repo (and branch) exists and the token may write to it: checked before any long work."""
    if not REPO_ID.match(repo_id) or "@" in repo_id:
        raise InputError(f"{repo_id!r} is not a Hub repo id; use org/name (the branch goes in --revision)")
    client = api(token)
    with hub_errors(repo_id, revision, action="upload"):
        client.create_repo(repo_id, exist_ok=True, private=private)
        if revision and not create_pr:
            client.create_branch(repo_id, branch=revision, exist_ok=True)


def commit(
    repo_id: str,
    operations: list[Any],
    *,
    message: str,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> str:
    """One commit of these operations; the commit (or pull request) URL.

    huggingface_hub retries every upload but not the commit that ends it: here a commit the Hub refused for now
    (408/425/429/5xx) or that could not reach it is tried again (see `inputs.retry`), so that a long streamed merge
    is not lost to one bad answer at its very end. A connection lost after the request was sent is not retried
    (the commit may have been made): that ends the run, and running it again resumes.
    """
    failures = 0
    while True:
        try:
            with hub_errors(repo_id, revision, action="upload"):
                info = api(token).create_commit(
                    repo_id, operations, revision=revision, create_pr=create_pr, commit_message=message
                )
            return str(info.pr_url or info.commit_url)
        except HubError as err:
            failures += 1
            again, asked = _commit_again(err.__cause__)
            if not again or failures >= retry.ATTEMPTS:
                raise
            time.sleep(retry.wait(failures, asked))


def _commit_again(err: BaseException | None) -> tuple[bool, str | None]:
    """Whether a failed commit may be tried again (it was surely not made), and the Retry-After it was given."""
    from huggingface_hub import errors  # the Hub client loads when the Hub is used

    if isinstance(err, errors.HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        return retry.retried_status(status), err.response.headers.get("Retry-After")
    cause = network_cause(err)
    unsent = ("ConnectError", "ConnectTimeout", "ConnectionRefusedError")  # nothing reached the Hub
    return cause is not None and type(cause).__name__ in unsent, None


def upload_operations(folder: Path) -> list[Any]:
    """One `CommitOperationAdd` per file of an output folder, without reading the shards a second time.

    The sha256 of every shard was computed while the merge wrote it and is recorded in config.json: a shard
    unchanged since (its size as recorded, not modified after config.json was written) is sent with that
    sha256, so huggingface_hub does not hash it again before uploading. Any other file is hashed as usual.
    """
    from huggingface_hub import CommitOperationAdd  # the Hub client loads when the Hub is used

    config = folder / CONFIG_NAME
    try:
        record = json.loads(config.read_text(encoding="utf-8")).get("expo") or {}
    except (OSError, ValueError, AttributeError):
        record = {}
    checksums, sizes = record.get("shards") or {}, record.get("shard_sizes") or {}
    written = config.stat().st_mtime_ns
    operations = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith((".cache/", ".expo-partial-")):
            continue
        operation = CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(path))
        stat = path.stat()
        if relative in checksums and sizes.get(relative) == stat.st_size and stat.st_mtime_ns <= written:
            operation.upload_info.sha256 = bytes.fromhex(checksums[relative])
        operations.append(operation)
    return operations


class Uploader:
    """Uploads each finished shard as an LFS object on a thread of its own, then deletes the local file.

    One shard uploads at a time and none waits behind it: `shard_closed` returns only once the previous upload is
    done, so the scratch folder holds the shard being uploaded and the one being written, however slow the link
    (or however long huggingface_hub retries), and a failed upload stops the writer at the next shard.
    """

    def __init__(self, repo_id: str, revision: str | None, create_pr: bool, token: str | None) -> None:
        self.client = api(token)
        self.repo_id, self.revision, self.create_pr = repo_id, revision, create_pr
        self.operations: list[Any] = []
        self.bytes_sent = 0  # of the shards uploaded, and the seconds their uploads took: the upload speed
        self.seconds_sending = 0.0
        self._queue: queue.Queue = queue.Queue()
        self._idle = threading.Semaphore(1)  # released when an upload ends, whatever its outcome
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="expo-uploader", daemon=True)
        self._thread.start()

    def shard_closed(self, path: Path, sha256: str) -> None:
        """Hand over a complete shard once the previous upload is done (called on the hashing thread, so the
        writer waits too). After a failed upload, raise it there: the writer then stops, instead of filling the
        scratch folder with shards that will never leave."""
        self._idle.acquire()
        if self._error is not None:
            self._idle.release()
            raise self._error
        self._queue.put((path, sha256))

    def _run(self) -> None:
        from huggingface_hub import CommitOperationAdd  # the Hub client loads when the Hub is used

        while (item := self._queue.get()) is not None:
            path, sha256 = item
            try:
                if self._error is not None:
                    continue  # after a failure, nothing more is sent (the run ends with that error)
                operation = CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
                operation.upload_info.sha256 = bytes.fromhex(sha256)
                started = time.monotonic()
                with hub_errors(self.repo_id, self.revision, action="upload"), profiling.stage("upload"):
                    self.client.preupload_lfs_files(
                        self.repo_id, [operation], revision=self.revision, create_pr=self.create_pr
                    )
                self.seconds_sending += time.monotonic() - started
                self.bytes_sent += operation.upload_info.size
                path.unlink()
                self.operations.append(operation)
            except BaseException as err:  # raised on the hashing thread by shard_closed, and by close()
                self._error = err
            finally:
                self._idle.release()

    def close(self) -> list[Any]:
        """Wait for every upload; return the operations for the commit (or raise the first upload error)."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.operations
