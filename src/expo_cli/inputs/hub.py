"""The Hugging Face Hub, in and out: repo ids as inputs (validated from headers before any weight is
downloaded) and publishing an output folder in one commit.

Everything goes through huggingface_hub, so HF_TOKEN, HF_HOME/HF_HUB_CACHE, HF_HUB_OFFLINE and HF_ENDPOINT
work as everywhere else. Every failure becomes a HubError naming the repo and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import (
    CONFIG_NAME,
    PYTORCH_INDEX_FILE,
    REPO_ID,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
    VERSION,
)
from ..core.sources import TensorInfo
from ..errors import HubError, InputError, first_line
from .adapters import ADAPTER_CONFIG
from .headers import check_supported, parse_entry

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
    """Turn huggingface_hub's exceptions into one clear HubError line."""
    from huggingface_hub import errors  # the Hub client loads when the Hub is used

    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        yield
    except errors.GatedRepoError as err:
        raise HubError(f"{at} is gated: accept its terms on the Hub and set HF_TOKEN to a token with access") from err
    except errors.RevisionNotFoundError as err:
        raise HubError(f"{at}: revision {revision!r} not found; check the branch, tag or commit") from err
    except errors.RepositoryNotFoundError as err:
        raise HubError(
            f"{repo_id}: repository not found (or private: set HF_TOKEN to a token that can read it)"
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
        raise HubError(f"{at}: {action} failed ({type(cause).__name__}: {cause}); run again to resume") from err


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


def fetch_headers(source: HubInput, role: str, token: str | None = None) -> RemoteCheckpoint:
    """Resolve the revision, read config.json, the index and every shard's header (ranged requests)."""
    from huggingface_hub import hf_hub_download  # the Hub client loads when the Hub is used

    client = api(token)
    with hub_errors(source.repo_id, source.revision):
        info = client.model_info(source.repo_id, revision=source.revision)
        sha = info.sha
        files = {s.rfilename for s in info.siblings or []}
        if CONFIG_NAME not in files:
            raise InputError(f"--{role} {source.repo_id}: no {CONFIG_NAME} in the repo; not a transformers model")
        config_path = hf_hub_download(source.repo_id, CONFIG_NAME, revision=sha, token=token)
        if SAFETENSORS_SINGLE_FILE in files or SAFETENSORS_INDEX_FILE in files:
            metadata = client.get_safetensors_metadata(source.repo_id, revision=sha, token=token)
            patterns = [SAFETENSORS_INDEX_FILE, *sorted(set(metadata.weight_map.values()))]
        elif "pytorch_model.bin" in files or PYTORCH_INDEX_FILE in files:
            metadata, patterns = None, ["pytorch_model*.bin", PYTORCH_INDEX_FILE]
        else:
            raise InputError(f"--{role} {source.repo_id}: no safetensors or pytorch_model.bin weights in the repo")
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--{role} {source.repo_id}: config.json is not valid JSON ({err})") from err
    tensors: dict[str, TensorInfo] = {}
    # In the order a local copy is read (files by name, tensors by offset), so that both plan the same output.
    for filename, file_metadata in sorted(metadata.files_metadata.items()) if metadata else ():
        infos = []
        for name, tensor in file_metadata.tensors.items():
            entry = {"dtype": tensor.dtype, "shape": list(tensor.shape), "data_offsets": list(tensor.data_offsets)}
            infos.append(parse_entry(Path(f"{source.repo_id}/{filename}"), name, entry))
        for info in sorted(infos, key=lambda i: i.offset):
            check_supported(info)
            if info.name in tensors:
                raise InputError(f"{source.repo_id}: tensor {info.name!r} is stored in two shards")
            tensors[info.name] = info
    config = config if isinstance(config, dict) else {}
    return RemoteCheckpoint(source.repo_id, source.revision, sha, config, tensors, patterns)


def _snapshot(
    repo_id: str, revision: str | None, patterns: Sequence[str], token: str | None = None, cached: bool = False
) -> Path:
    """The files of a repo matching `patterns`, through the huggingface_hub cache (`cached`: from it alone)."""
    from huggingface_hub import snapshot_download  # the Hub client loads when the Hub is used

    return Path(
        snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(patterns),
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
    remote: RemoteCheckpoint, token: str | None = None, extra: Sequence[str] = (), weights: bool = True
) -> Path:
    """Download the weights of one format (unless `weights` is False: `--stream` reads them by ranges), the side
    files and `extra` patterns through the cache, at the validated commit.

    Asked by the user's revision (so the cache learns the branch, for HF_HUB_OFFLINE runs later), then
    checked to be the commit whose headers were validated.
    """
    patterns = [*(remote.weight_patterns if weights else []), *SIDE_FILES, *extra]
    with hub_errors(remote.repo_id, remote.revision):
        folder = _snapshot(remote.repo_id, remote.revision, patterns, token)
    if folder.name != remote.sha:
        raise HubError(f"{remote.repo_id}@{remote.revision}: the branch moved during the download; run again")
    return folder


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
