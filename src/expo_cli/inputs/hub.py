"""The Hugging Face Hub, in and out: repo ids as inputs (validated from headers before any weight is
downloaded) and publishing an output folder in one commit.

Everything goes through huggingface_hub, so HF_TOKEN, HF_HOME/HF_HUB_CACHE, HF_HUB_OFFLINE and HF_ENDPOINT
work as everywhere else. Every failure becomes a HubError naming the repo and what to do.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..constants import (
    PYTORCH_INDEX_FILE,
    REPO_ID,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
    VERSION,
)
from ..core.sources import TensorInfo
from ..errors import HubError, InputError, first_line
from ..fsutil import MAX_SIDE_FILE_BYTES, too_large
from .adapters import ADAPTER_CONFIG
from .integrity import Listed

# What a merge needs from a repo besides the weights: configs, tokenizer, chat template, custom code.
# (expo's side-file policy then picks from these what the output carries.)
SIDE_FILES = [
    "*.json",
    "*.jinja",
    "*.py",
    "*.model",
    "*.model.v*",
    "*.txt",
    "*.tiktoken",
    "*.md",
    "*.spm",
    "*.vocab",
    "LICENSE*",
    "LICENCE*",
    "NOTICE*",
    "USE_POLICY*",
]


# A folder of the huggingface_hub cache: .../models--org--name/snapshots/<commit>
_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<sha>[0-9a-f]{40})$")


def cache_origin(path: Path) -> tuple[str, str] | None:
    """(repo id, commit) of a folder of the huggingface_hub cache, or None for any other folder."""
    match = _CACHE_SNAPSHOT.search(path.resolve().as_posix())
    return (f"{match['org']}/{match['name']}", match["sha"]) if match else None


def input_name(path: Path) -> str:
    """What the provenance calls an input: its repo id, or its folder's name (never a local path)."""
    origin = cache_origin(path)
    return origin[0] if origin else path.resolve().name


@dataclass(frozen=True)
class HubInput:
    repo_id: str
    revision: str | None


def parse_input(spec: str, revision: str | None = None) -> HubInput | None:
    """A Hub repo id, or None for a local path. An existing local folder always wins."""
    if Path(spec).exists():
        return None
    match = REPO_ID.match(spec)
    if not match:
        return None
    if match["revision"] and revision and match["revision"] != revision:
        raise InputError(f"{spec}: two revisions given ({match['revision']!r} and {revision!r}); keep one")
    return HubInput(match["repo"], match["revision"] or revision)


def api(token: str | None = None) -> Any:
    from huggingface_hub import HfApi  # the Hub client loads when the Hub is used

    return HfApi(token=token, library_name="expo-cli", library_version=VERSION)


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None, action: str = "download") -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one clear HubError line. A download is of an input given as a
    path with no local folder there (`parse_input`): the line says so, since a mistyped path reads as a repo id."""
    from huggingface_hub import errors  # the Hub client loads when the Hub is used

    at = f"{repo_id}@{revision}" if revision else repo_id
    tried = " (no local folder of that name: tried as a Hub repo id)" if action == "download" else ""
    try:
        yield
    except errors.GatedRepoError as err:
        raise HubError(f"{at} is gated: accept its terms on the Hub and set HF_TOKEN to a token with access") from err
    except errors.RevisionNotFoundError as err:
        raise HubError(f"{at}: revision {revision!r} not found; check the branch, tag or commit") from err
    except errors.RepositoryNotFoundError as err:
        raise HubError(
            f"{repo_id}{tried}: repository not found (or private: set HF_TOKEN to a token that can read it)"
        ) from err
    except errors.LocalEntryNotFoundError as err:
        raise HubError(
            f"{at}: offline (HF_HUB_OFFLINE=1) and not in the cache; go online once or pass a local folder"
        ) from err
    except errors.OfflineModeIsEnabled as err:
        raise HubError(f"{at}: offline (HF_HUB_OFFLINE=1); unset it or pass a local folder") from err
    except errors.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            need = "write access" if action == "upload" else "read access"
            raise HubError(f"{at}: the Hub refused the token ({status}); set HF_TOKEN to a token with {need}") from err
        raise HubError(f"{at}: {action} failed: {first_line(err)}; run again to resume") from err
    except Exception as err:
        cause = network_cause(err)
        if cause is None:
            raise
        check = "check the path, or the network, and " if tried else ""
        raise HubError(
            f"{at}{tried}: {action} failed ({type(cause).__name__}: {cause}); {check}run again to resume"
        ) from err


def network_cause(err: BaseException | None) -> BaseException | None:
    """The connection error behind an exception (huggingface_hub wraps some in RuntimeError), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) or type(err).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            return err
        err = err.__cause__ or err.__context__
    return None


@dataclass
class RemoteCheckpoint:
    """What a Hub repo holds, learnt without downloading weights: commit, config, and tensor headers.

    A header-only `TensorSource`: enough to validate and plan a merge (a dry run stops there); data comes from
    the downloaded folder, or from a ranged reader built on the same headers.
    """

    repo_id: str
    revision: str | None  # as the user gave it (None: main)
    sha: str
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    weight_patterns: list[str]
    listed: dict[str, Listed] = field(default_factory=dict)  # every file of the commit: size and hash
    data_starts: dict[Path, int] = field(default_factory=dict)  # where each shard's data section starts
    headers: dict[Path, bytes] = field(default_factory=dict)  # each shard's first bytes, as read and validated

    @property
    def path(self) -> Path:
        return Path(self.repo_id)

    @property
    def readable(self) -> bool:
        return False

    def __enter__(self) -> RemoteCheckpoint:
        raise RuntimeError(f"{self.repo_id}: headers only; download it to read data")

    def __exit__(self, *exc: object) -> None:
        pass


def _snapshot(
    repo_id: str,
    revision: str | None,
    patterns: Sequence[str],
    token: str | None = None,
    cached: bool = False,
    skip: Sequence[str] = (),
) -> Path:
    """The files of a repo matching `patterns` but not `skip`, through the huggingface_hub cache (`cached`: from
    it alone)."""
    from huggingface_hub import snapshot_download  # the Hub client loads when the Hub is used

    return Path(
        snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(patterns),
            ignore_patterns=list(skip) or None,
            token=token,
            local_files_only=cached,
            library_name="expo-cli",
            library_version=VERSION,
        )
    )


def offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub reads it (a function in recent versions, a constant before)."""
    from huggingface_hub import constants  # the Hub client loads when the Hub is used

    return constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else bool(constants.HF_HUB_OFFLINE)


def adapter_snapshot(source: HubInput, token: str | None = None) -> Path | None:
    """The local copy of a Hub repo holding a PEFT adapter (downloaded whole at one commit: adapters are small),
    or None when the repo holds a full model."""
    full = {SAFETENSORS_SINGLE_FILE, SAFETENSORS_INDEX_FILE, "pytorch_model.bin", PYTORCH_INDEX_FILE}
    patterns = ["adapter_model.safetensors", "adapter_model.bin", *SIDE_FILES]
    with hub_errors(source.repo_id, source.revision):
        if offline():
            try:
                folder = _snapshot(source.repo_id, source.revision, patterns, cached=True)
            except Exception:  # not cached as an adapter: let the full-model path say why
                return None
            return folder if (folder / ADAPTER_CONFIG).is_file() else None
        info = api(token).model_info(source.repo_id, revision=source.revision)
        files = {s.rfilename for s in info.siblings or []}
        if ADAPTER_CONFIG not in files or files & full:
            return None
        return _snapshot(source.repo_id, info.sha, patterns, token)


def download(
    remote: RemoteCheckpoint,
    token: str | None = None,
    extra: Sequence[str] = (),
    weights: bool = True,
    side: Sequence[str] = SIDE_FILES,
    skip: Sequence[str] = (),
) -> Path:
    """Download the weights of one format (unless `weights` is False: `--stream` reads them by ranges), the `side`
    files (but those `skip` names) and `extra` patterns through the cache, at the validated commit.

    Every side file is checked against MAX_SIDE_FILE_BYTES from the size the Hub lists, before anything is
    downloaded. Asked by the user's revision (so the cache learns the branch, for HF_HUB_OFFLINE runs later), then
    checked to be the commit whose headers were validated.
    """
    for name, listed in sorted(remote.listed.items()):
        if listed.size > MAX_SIDE_FILE_BYTES and _matches(name, side) and not _matches(name, skip):
            raise too_large(f"{remote.repo_id}/{name}", listed.size, MAX_SIDE_FILE_BYTES)
    patterns = [*(remote.weight_patterns if weights else []), *side, *extra]
    with hub_errors(remote.repo_id, remote.revision):
        folder = _snapshot(remote.repo_id, remote.revision, patterns, token, skip=skip)
    if folder.name != remote.sha:
        raise HubError(f"{remote.repo_id}@{remote.revision}: the branch moved during the download; run again")
    return folder


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def cached(source: HubInput) -> Path:
    """Offline: the cached snapshot of a repo (as an earlier run downloaded it), or a HubError."""
    from huggingface_hub.errors import LocalEntryNotFoundError  # the Hub client loads when the Hub is used

    def snapshot(weights: list[str]) -> Path:  # the tree cache knows what a complete download of these holds
        with hub_errors(source.repo_id, source.revision):
            return _snapshot(source.repo_id, source.revision, [*weights, *SIDE_FILES], cached=True)

    try:
        return snapshot(["*.safetensors", SAFETENSORS_INDEX_FILE])
    except HubError as err:
        if not isinstance(err.__cause__, LocalEntryNotFoundError):
            raise
        return snapshot(["pytorch_model*.bin", PYTORCH_INDEX_FILE])
