"""Publishing to the Hugging Face Hub: an output folder in one commit, or shards uploaded as they close.

`push` uploads a finished folder (reusing the sha256 of every shard the merge computed while writing it).
With `--stream` an `Uploader` sends each output shard as an LFS object the moment it is complete and deletes it,
so the scratch folder holds at most the shard being written and the one being uploaded; one commit at the end
adds config, card and side files and points at the uploaded shards.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..constants import CONFIG_NAME, PARTIAL_PREFIX, REPO_ID, VERSION
from ..core import profile as profiling
from ..errors import HubError, InputError
from ..fsutil import contained_file, folder_files
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
    info: Callable[[str], None] = lambda text: None,
) -> str:
    """Upload a finished output folder in one commit; return the commit (or pull request) URL.

    Running it again after a lost connection resumes: files the Hub already holds are not sent again. `info` hears
    "Uploading…" once the folder and the repo have been checked, not before.
    """
    folder = Path(folder)
    retry.new_run()
    if not (folder / CONFIG_NAME).is_file():
        raise InputError(f"{folder}: not a model folder (no {CONFIG_NAME}); push the output of expo merge")
    prepare_repo(repo_id, private=private, revision=revision, create_pr=create_pr, token=token)
    info(f"Uploading {folder} to {repo_id}")
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
    """One commit of these operations, made at most once; the commit (or pull request) URL.

    Publishing is idempotent: a ref that already holds exactly these files (the same sha256 for LFS files, the same
    git blob for the others) is the result, and no commit is made; so is a pull request opened by an earlier
    attempt. The commit names the branch head it builds on (`parent_commit`): the Hub refuses it if anything landed
    in between, so it is never applied twice. huggingface_hub does not retry the commit; here one that failed for
    a reason a retry may cure (the connection, 408/425/429/5xx; see `inputs.retry`) is tried again, but only after
    looking whether the failed attempt was made after all (a 504 can come after the commit).
    """
    client = api(token)
    branch = revision or "main"
    with hub_errors(repo_id, revision, action="upload"):
        before = _refs(client, repo_id)
        if (published := _published(client, repo_id, operations, before, branch, create_pr, None)) is not None:
            return published
    failures = 0
    while True:
        try:
            with hub_errors(repo_id, revision, action="upload"):
                info = client.create_commit(
                    repo_id,
                    operations,
                    revision=revision,
                    create_pr=create_pr,
                    commit_message=message,
                    parent_commit=before.get(f"refs/heads/{branch}"),
                )
            return str(info.pr_url or info.commit_url)
        except HubError as err:
            if _status(err.__cause__) == 412:  # the pinned parent is no longer the head
                raise HubError(
                    f"{repo_id}@{branch}: another commit landed on the branch while this run uploaded; nothing was "
                    "committed: run again to commit on top of it"
                ) from err
            failures += 1
            again, asked = _commit_again(err.__cause__)
            if not again or failures >= retry.ATTEMPTS:
                raise
            retry.wait(failures, asked, f"{repo_id}: the commit")
            with hub_errors(repo_id, revision, action="upload"):
                now = _refs(client, repo_id)
                if (published := _published(client, repo_id, operations, now, branch, create_pr, before)) is not None:
                    return published


def _commit_again(err: BaseException | None) -> tuple[bool, str | None]:
    """Whether a failed commit may be tried again once it is known not to have been made, and the Retry-After."""
    from huggingface_hub import errors  # the Hub client loads when the Hub is used

    if isinstance(err, errors.HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        return retry.retried_status(status), err.response.headers.get("Retry-After")
    return network_cause(err) is not None, None


def _status(err: BaseException | None) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _refs(client: Any, repo_id: str) -> dict[str, str]:
    """The repo's branches and pull requests: full ref name -> commit."""
    refs = client.list_repo_refs(repo_id, include_pull_requests=True)
    return {ref.ref: ref.target_commit for ref in [*refs.branches, *(refs.pull_requests or [])]}


REGULAR_FILE_BYTES = 10 * 1000**2  # larger files are LFS objects on the Hub, compared by sha256
RECENT_PULL_REQUESTS = 20  # how many of the newest open pull requests a --create-pr run looks into first


def _published(
    client: Any,
    repo_id: str,
    operations: list[Any],
    refs: dict[str, str],
    branch: str,
    create_pr: bool,
    before: dict[str, str] | None,
) -> str | None:
    """The URL of a ref that already holds exactly these files: the branch (or, with `create_pr`, a pull request;
    after a failed attempt, one opened since `before`), else None."""
    if create_pr:
        numbers = sorted(
            (
                int(ref.rsplit("/", 1)[1])
                for ref in refs
                if ref.startswith("refs/pr/") and ref.rsplit("/", 1)[1].isdigit()
            ),
            reverse=True,
        )
        opened = [n for n in numbers if before is None or f"refs/pr/{n}" not in before][:RECENT_PULL_REQUESTS]
        for number in opened:
            if _holds(client, repo_id, f"refs/pr/{number}", operations):
                return f"{client.endpoint}/{repo_id}/discussions/{number}"
        return None
    head = refs.get(f"refs/heads/{branch}")
    if head is not None and _holds(client, repo_id, head, operations):
        return f"{client.endpoint}/{repo_id}/commit/{head}"
    return None


def _holds(client: Any, repo_id: str, revision: str, operations: list[Any]) -> bool:
    """Whether the repo at `revision` has every file of `operations` with the same content."""
    files = {
        entry.path: entry
        for entry in client.list_repo_tree(repo_id, revision=revision, recursive=True)
        if hasattr(entry, "blob_id")
    }
    for operation in operations:
        entry = files.get(operation.path_in_repo)
        if entry is None:
            return False
        if entry.lfs is not None:
            if entry.lfs.sha256 != operation.upload_info.sha256.hex():
                return False
        elif entry.blob_id != _git_blob_id(operation):
            return False
    return True


def _git_blob_id(operation: Any) -> str | None:
    """The git blob id of a small file the commit would add (None when it cannot be read: an uploaded shard)."""
    if operation.upload_info.size > REGULAR_FILE_BYTES:
        return None
    try:
        with operation.as_file() as fh:
            data = fh.read()
    except OSError:
        return None
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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
    for relative in folder_files(folder, (".cache",)):
        if relative.startswith(PARTIAL_PREFIX):
            continue
        path = contained_file(folder, relative, limit=None)  # a link out of the folder is never published
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
