"""Which of the aligned folder's other files the output carries: a deliberate policy, not "copy everything else".

Folders as they really look after training and download hold much that must not travel with a merged model:
a stale `adapter_config.json` makes transformers look for adapter weights that are not there, `checkpoint-*/`
folders look like models but hold no weights, TensorBoard logs carry host names, and format files (Mistral's
`params.json`, Meta's `original/`) announce weights the output does not have. So the output gets exactly what a
loader of the aligned model needs (tokenizer, chat templates, generation and processor configs, the custom code
its `auto_map` names, the licence), byte for byte; everything else is skipped, listed by the run and by
`--dry-run`, and recorded in the provenance. `--copy GLOB` and `--skip GLOB` override the policy.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..constants import CONFIG_NAME, MISTRAL_INDEX_FILE, REPOCARD_NAME, WEIGHT_EXTENSIONS, WEIGHT_INDEX_SUFFIXES
from ..errors import UsageError
from ..fsutil import contained_file, folder_files, fsync_path

# Folders that belong to tools, not to the model: never looked at, never listed.
TOOL_FOLDERS = (".git", ".cache", ".huggingface")

# What loaders read beside the weights (top-level names; fnmatch patterns).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "tokenizer.model.v*",
    "tekken.json",
    "*.tiktoken",
    "spiece.model",
    "sentencepiece*.model",
    "*.spm",
    "qwen.tiktoken",
)
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "additional_chat_templates/*.jinja")
CONFIG_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "image_processor_config.json",
    "feature_extractor_config.json",
)
LICENSE_FILES = ("LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*", "COPYING*")

# What must not travel: (reason, patterns). Matched against the path relative to the folder.
SKIP_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("training checkpoint (no weights the output uses)", ("checkpoint-*/*",)),
    ("training logs", ("runs/*", "wandb/*", "logs/*", "*events.out.tfevents*", "*.log")),
    ("original-format files (the output writes only the Hugging Face format)", ("original/*",)),
    (
        "training state",
        (
            "optimizer.*",
            "scheduler.*",
            "scaler.pt",
            "rng_state*",
            "trainer_state.json",
            "training_args.bin",
            "all_results.json",
            "train_results.json",
            "eval_results.json",
            "global_step*/*",
            "latest",
            "zero_to_fp32.py",
        ),
    ),
    ("PEFT adapter files (the output is a full model)", ("adapter_config.json", "adapter_model.*")),
)
MISTRAL_WEIGHTS = ("consolidated*.safetensors", MISTRAL_INDEX_FILE)
MISTRAL_PARAMS = "params.json"
MISTRAL_REASON = "Mistral-format files (--mistral-format extrapolates consolidated*.safetensors too)"
OTHER_REASON = "not needed to load the model"
LOGS_REASON = "training logs"

# `from .module import x` / `import .module`: the relative imports transformers follows for custom code.
_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\S*)\s+import|import\s+\.(\S+))", re.MULTILINE)


@dataclass
class SideFiles:
    """The aligned folder's non-weight files, sorted into those the output copies and those it skips."""

    copied: list[str] = field(default_factory=list)  # relative POSIX paths, copied byte for byte
    skipped: dict[str, str] = field(default_factory=dict)  # relative POSIX path -> reason
    borrowed: dict[str, Path] = field(default_factory=dict)  # copied from another folder: path -> that folder

    def listing(self) -> dict[str, str]:
        """The skipped files for people and the provenance: a skipped folder as one entry, log names hidden
        (TensorBoard puts the host name in them)."""
        entries: dict[str, list[str]] = {}
        for path, reason in self.skipped.items():
            parts = PurePosixPath(path).parts
            whole = len(parts) > 1 and not any(p.startswith(f"{parts[0]}/") for p in self.copied)
            key = f"{parts[0]}/" if whole else path
            if reason == LOGS_REASON and len(parts) == 1:
                key = "log files"
            entries.setdefault(key, []).append(reason)
        return {
            key: reasons[0] + (f", {len(reasons)} files" if len(reasons) > 1 else "")
            for key, reasons in entries.items()
        }


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def is_weight_file(path: str) -> bool:
    return path.endswith(WEIGHT_EXTENSIONS) or path.endswith(WEIGHT_INDEX_SUFFIXES)


def has_mistral_format(folder: Path) -> bool:
    """Whether a folder also holds Mistral-format weights (consolidated*.safetensors beside params.json)."""
    return (folder / MISTRAL_PARAMS).is_file() and any(folder.glob("consolidated*.safetensors"))


def select(
    folder: Path,
    own: Sequence[str] = (),
    copy: Sequence[str] = (),
    skip: Sequence[str] = (),
    mistral_format: bool = False,
) -> SideFiles:
    """Sort every file of the aligned folder (but its weights, config.json and README.md) by the policy.

    Args:
        folder: the aligned checkpoint folder.
        own: its weight files and index, which the output replaces with its own.
        copy: globs of files to copy whatever the policy says (weights excepted: they would be un-extrapolated).
        skip: globs of files to leave out whatever the policy says.
        mistral_format: the output gets Mistral-format weights too, so their `params.json` travels.

    Raises:
        UsageError: a --copy or --skip glob matches no file, or --copy names a weight file.
        InputError: a file to copy is a link out of the folder, not a regular file, or too large
            (see `fsutil.contained_file`).
    """
    files = folder_files(folder, TOOL_FOLDERS)
    for option, globs in (("--copy", copy), ("--skip", skip)):
        for glob in globs:
            if not any(fnmatch.fnmatchcase(f, glob) for f in files):
                raise UsageError(f"{option} {glob!r}: matches no file of the aligned folder {folder.name}")
    code = custom_code(folder, files)
    result = SideFiles()
    for path in files:
        weight = is_weight_file(path) or _matches(path, MISTRAL_WEIGHTS)
        if path.endswith(WEIGHT_EXTENSIONS) and _matches(path, copy):
            raise UsageError(f"--copy: {path} is a weight file; the output never carries un-extrapolated weights")
        if path in (CONFIG_NAME, REPOCARD_NAME) or path in own:
            continue  # written anew: the weights, config.json with provenance, the card that keeps the aligned text
        if _matches(path, skip):
            result.skipped[path] = "left out by --skip"
        elif _matches(path, copy):
            result.copied.append(path)
        elif _matches(path, (*MISTRAL_WEIGHTS, MISTRAL_PARAMS)):
            if not mistral_format:
                result.skipped[path] = MISTRAL_REASON
            elif not weight:
                result.copied.append(path)  # params.json; the consolidated weights are written extrapolated
        elif reason := next((reason for reason, globs in SKIP_RULES if _matches(path, globs)), None):
            result.skipped[path] = reason
        elif weight:
            result.skipped[path] = "weights in another format (not extrapolated)"
        elif path in code or _matches(path, (*TOKENIZER_FILES, *TEMPLATE_FILES, *CONFIG_FILES, *LICENSE_FILES)):
            result.copied.append(path)
        else:
            result.skipped[path] = OTHER_REASON
    for path in result.copied:  # before any work: a link out of the folder, a device, a huge file
        contained_file(folder, path)
    return result


def borrow(side: SideFiles, folder: Path) -> None:
    """Add the loader files of `folder` that the selection lacks (an adapter folder without a tokenizer or a
    generation config gets its base model's), so the merged output loads like a full model."""
    present = set(side.copied)
    for path in select(folder).copied:
        if path not in present:
            present.add(path)
            side.copied.append(path)
            side.borrowed[path] = folder


def copy_all(side: SideFiles, default: Path, target: Path) -> None:
    """Copy every selected file from where it comes from (the aligned folder, or the folder it was borrowed from)."""
    copy_files(default, [p for p in side.copied if p not in side.borrowed], target)
    for folder in dict.fromkeys(side.borrowed.values()):
        copy_files(folder, [p for p, origin in side.borrowed.items() if origin == folder], target)


def copy_files(source: Path, files: Sequence[str], target: Path) -> None:
    """Copy files byte for byte (re-serialising is how peers lost EOS tokens and chat templates), each fsync-ed,
    and the folders they create too, so that the final rename publishes them durably."""
    created: set[Path] = set()
    for relative in files:
        destination = target / relative
        for parent in reversed(destination.relative_to(target).parents[:-1]):
            if not (target / parent).is_dir():
                (target / parent).mkdir()
            created.add(target / parent)
        shutil.copyfile(contained_file(source, relative), destination)
        fsync_path(destination)
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        fsync_path(folder)


def loader_patterns(copy: Sequence[str] = (), mistral_format: bool = False) -> list[str]:
    """The globs of every file the policy may copy but custom code (see `custom_code_wanted`): what a streamed merge
    downloads of the aligned repo, and nothing else (config.json and the card are read for the output's own)."""
    mistral = [MISTRAL_PARAMS] if mistral_format else []
    return [
        CONFIG_NAME,
        REPOCARD_NAME,
        *TOKENIZER_FILES,
        *TEMPLATE_FILES,
        *CONFIG_FILES,
        *LICENSE_FILES,
        *mistral,
        *copy,
    ]


def custom_code_wanted(folder: Path) -> set[str]:
    """The `.py` modules the folder's custom code needs that it does not hold yet (fetch them, then ask again)."""
    files = folder_files(folder, TOOL_FOLDERS)
    return custom_code(folder, files, missing=True) - set(files)


def custom_code(folder: Path, files: Sequence[str], missing: bool = False) -> set[str]:
    """The `.py` files the folder's `auto_map` entries name, and the modules they import relatively (`missing`:
    also those named but absent)."""
    present = set(files)
    wanted: list[str] = []
    for name in files:
        if "/" in name or not name.endswith(".json"):
            continue
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        for ref in _references(auto_map):
            if "--" not in ref and "." in ref:  # `org/repo--module.Class` lives in another repo
                wanted.append(ref.rsplit(".", 1)[0].replace(".", "/") + ".py")
    found: set[str] = set()
    while wanted:
        module = wanted.pop()
        if module in found or (module not in present and not missing):
            continue
        found.add(module)
        if module not in present:
            continue
        try:
            source = (folder / module).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        base = PurePosixPath(module).parent
        for match in _RELATIVE_IMPORT.finditer(source):
            name = (match.group(1) or match.group(2) or "").strip()
            if name and not name.startswith("."):
                wanted.append((base / (name.replace(".", "/") + ".py")).as_posix())
    return found


def _references(value: Any) -> list[str]:
    """Every `module.Class` string in an auto_map (values are strings or lists of strings and None)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [ref for item in value for ref in _references(item)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in _references(item)]
    return []
