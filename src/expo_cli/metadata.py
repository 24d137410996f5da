"""Everything in the output besides the weights: config.json with provenance, the model card, copied files.

The aligned model is the donor of every non-weight file (tokenizer, chat template, generation_config.json,
custom code), copied byte for byte: re-serialising them is how peers lost EOS tokens and chat templates.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .constants import CONFIG_NAME, REPOCARD_NAME, SKIPPED_FOLDERS, WEIGHT_EXTENSIONS, WEIGHT_INDEX_SUFFIXES
from .output import write_durably

# A folder of the huggingface_hub cache: .../models--org--name/snapshots/<commit>
_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<sha>[0-9a-f]{40})$")


@dataclass(frozen=True)
class Source:
    """Where an input came from: a local folder, and the Hub repo and commit when known."""

    path: str
    repo_id: str | None = None
    revision: str | None = None

    @classmethod
    def from_path(cls, path: Path) -> Source:
        """Recognise a folder of the huggingface_hub cache as the Hub repo it was downloaded from."""
        resolved = path.resolve()
        match = _CACHE_SNAPSHOT.search(resolved.as_posix())
        if match:
            return cls(str(resolved), f"{match['org']}/{match['name']}", match["sha"])
        return cls(str(resolved))

    @property
    def label(self) -> str:
        if self.repo_id:
            return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id
        return self.path

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in {"path": self.path, "repo_id": self.repo_id, "revision": self.revision}.items() if v}


def provenance(alpha: float, formula: str, sft: Source, aligned: Source, version: str, **extra: Any) -> dict[str, Any]:
    return {
        "method": "ExPO (model extrapolation, Zheng et al., ACL 2025)",
        "alpha": alpha,
        "formula": formula,
        "sft": sft.to_json(),
        "aligned": aligned.to_json(),
        "expo_version": version,
        **extra,
    }


def write_config(config: dict[str, Any], out_dtype: str | None, record: dict[str, Any], folder: Path) -> None:
    """The aligned config with the output dtype and an `expo` provenance block."""
    config = dict(config)
    if out_dtype is not None:
        config["dtype"] = out_dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = out_dtype
    config["expo"] = record
    write_durably(folder / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_EXTENSIONS) or name.endswith(WEIGHT_INDEX_SUFFIXES)


def extra_files(source: Path) -> list[Path]:
    """Every non-weight file of the aligned folder (tokenizer, templates, code), relative to it."""
    found = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part in SKIPPED_FOLDERS for part in relative.parts) or not path.is_file():
            continue
        if is_weight_file(path.name) or relative.as_posix() in (CONFIG_NAME, REPOCARD_NAME):
            continue
        found.append(relative)
    return found


def copy_extra_files(source: Path, folder: Path) -> list[str]:
    """Copy the aligned model's non-weight files byte for byte."""
    copied = extra_files(source)
    for relative in copied:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target)
    return [r.as_posix() for r in copied]


def _aligned_card_data(source: Path) -> dict[str, Any]:
    """License and language of the aligned model's card: a merge inherits them."""
    card = source / REPOCARD_NAME
    if not card.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(card).data.to_dict()
    except Exception:  # a malformed card must not stop a merge  # noqa: BLE001
        return {}
    return {k: data[k] for k in ("license", "license_name", "license_link", "language") if data.get(k)}


def write_model_card(folder: Path, record: dict[str, Any], sft: Source, aligned: Source, aligned_path: Path,
                     title: str, notes: list[str]) -> None:  # fmt: skip
    """README.md with Hub metadata (base_model lineage, relation `merge`) and the formula in the body."""
    from huggingface_hub import ModelCard, ModelCardData

    base_models = [s.repo_id for s in (aligned, sft) if s.repo_id]
    data = ModelCardData(
        base_model=base_models or None,
        base_model_relation="merge" if base_models else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["expo", "merge", "model-extrapolation"],
        **_aligned_card_data(aligned_path),
    )
    alpha = record["alpha"]
    notes_md = "".join(f"- {n}\n" for n in notes) or "- none\n"
    body = f"""# {title}

This model is an **ExPO** (model extrapolation) of an aligned model away from its SFT starting point,
made with expo {record["expo_version"]} and no training
([Zheng et al., "Model Extrapolation Expedites Alignment", ACL 2025](https://arxiv.org/abs/2404.16792)).

    {record["formula"]}

| | |
|---|---|
| α | {alpha:g} |
| aligned model (θ_aligned) | `{aligned.label}` |
| SFT model (θ_sft) | `{sft.label}` |

α = 0 would give the aligned model back unchanged, α = −1 the SFT model. Every floating-point tensor was
computed in float32 (float64 for float64 tensors) and rounded once to its output dtype; the tokenizer, chat
template, generation config and any custom code are the aligned model's files, copied unchanged.

Handled automatically:
{notes_md}"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    write_durably(folder / REPOCARD_NAME, str(card).encode())
