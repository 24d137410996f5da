"""Everything in the output besides the weights and copied files: config.json with provenance, and the model card.

Both may be pushed to the Hub, so neither ever holds an absolute local path: a local input is recorded by its
folder name and a digest of its tensor layout, a Hub input by repo id and commit. The card starts from the
aligned model's card, keeping its metadata (license, language, datasets, tags ...) and its text, so the output is
described like the model it came from, with an ExPO section on top saying what was done and how to redo it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import CONFIG_NAME, REPOCARD_NAME
from ..fsutil import write_durably
from ..inputs.hub import cache_origin

EXPO_TAGS = ["expo", "merge", "model-extrapolation"]
# Card fields that describe the aligned model itself, not a model derived from it.
NOT_INHERITED = ("base_model", "base_model_relation", "model-index", "model_name", "eval_results")


@dataclass(frozen=True)
class Source:
    """Where an input came from, in words that can be published: never an absolute local path."""

    name: str  # the repo id, or the local folder's name
    repo_id: str | None = None
    revision: str | None = None
    layout_sha256: str | None = None  # of the tensor names, dtypes, shapes and files: identifies a local input

    @classmethod
    def of(cls, path: Path, layout_sha256: str | None, hub_id: str | None = None) -> Source:
        """A Hub repo when known (from `hub_id`, or a folder of the huggingface_hub cache), else the folder name."""
        if hub_id:
            repo, _, revision = hub_id.partition("@")
            return cls(repo, repo, revision or None, layout_sha256)
        if origin := cache_origin(path):
            return cls(origin[0], origin[0], origin[1], layout_sha256)
        return cls(path.resolve().name, None, None, layout_sha256)

    def to_json(self) -> dict[str, str]:
        fields = {
            "name": self.name,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "layout_sha256": self.layout_sha256,
        }
        return {k: v for k, v in fields.items() if v}


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


@dataclass(frozen=True)
class AlignedCard:
    """The aligned model's card: its metadata and its text (both empty when it has none or it is unreadable)."""

    data: dict[str, Any]
    text: str

    @classmethod
    def read(cls, folder: Path) -> AlignedCard:
        card = folder / REPOCARD_NAME
        if not card.is_file():
            return cls({}, "")
        from huggingface_hub import ModelCard  # the Hub client loads when the Hub is used

        try:
            loaded = ModelCard.load(card)
        except Exception:  # a malformed card must not stop a merge
            return cls({}, "")
        return cls(loaded.data.to_dict(), loaded.text.strip())


def default_model_name(card: AlignedCard, aligned: Source) -> str:
    """`<aligned name>-expo`: the aligned card's model_name, else its repo or folder name."""
    name = card.data.get("model_name")
    if not isinstance(name, str) or not name.strip():
        name = aligned.name.rsplit("/", 1)[-1]
    return f"{name.strip()}-expo"


def pipeline_tag(config: dict[str, Any]) -> str | None:
    """What the Hub should call the model, from its architecture (used when the aligned card says nothing)."""
    architectures = config.get("architectures")
    names = [a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else []
    if any(n.endswith("ForImageTextToText") for n in names) or (
        "vision_config" in config and (not names or any(n.endswith("ForConditionalGeneration") for n in names))
    ):
        return "image-text-to-text"
    if any(n.endswith("ForCausalLM") for n in names):
        return "text-generation"
    if any(n.endswith("ForSequenceClassification") for n in names):
        return "text-classification"
    return None


def reproduce_command(record: dict[str, Any], output: str) -> str:
    """The `expo merge` command that makes this output again from the same inputs."""
    parts = [
        "expo",
        "merge",
        "--sft",
        _label(record["sft"]),
        "--aligned",
        _label(record["aligned"]),
        "--output",
        output,
        "--alpha",
        f"{record['alpha']:g}",
    ]
    if record.get("dtype"):
        parts += ["--dtype", record["dtype"]]
    for rule in record.get("rules") or []:
        option, _, value = str(rule["rule"]).partition(" ")
        if option.startswith("--"):
            parts += [option, value]
    if record.get("mistral_format"):
        parts.append("--mistral-format")
    if record.get("output") == "peft-adapter":
        parts.append("--as-adapter")
    return shlex.join(parts)


def _label(source: dict[str, str]) -> str:
    repo, revision = source.get("repo_id"), source.get("revision")
    return f"{repo}@{revision}" if repo and revision else source["name"]


def write_model_card(
    folder: Path,
    record: dict[str, Any],
    card: AlignedCard,
    config: dict[str, Any],
    model_name: str,
    adapter: bool = False,
) -> None:
    """README.md: the aligned card's metadata with the merge's lineage, an ExPO section, then the aligned text.
    An adapter output (`adapter`) is a PEFT adapter of the SFT model, and says so."""
    from huggingface_hub import ModelCard  # the Hub client loads when the Hub is used

    data = _card_data(record, card, config, model_name, adapter)
    body = _card_body(record, card, model_name, adapter)
    write_durably(folder / REPOCARD_NAME, str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")).encode())


def _card_data(
    record: dict[str, Any], card: AlignedCard, config: dict[str, Any], model_name: str, adapter: bool
) -> Any:
    """The card's metadata: the aligned card's own (but what describes only it), the merge's lineage, ExPO tags."""
    from huggingface_hub import ModelCardData  # the Hub client loads when the Hub is used

    inherited = {k: v for k, v in card.data.items() if k not in NOT_INHERITED and v not in (None, [], "")}
    base_models = [
        s["repo_id"] for s in ((record["sft"],) if adapter else (record["aligned"], record["sft"])) if s.get("repo_id")
    ]
    tags = inherited.pop("tags", None)
    # "base_model:..." tags (PEFT writes them) describe the aligned model's lineage, maybe with a local path.
    tags = (
        [t for t in tags if isinstance(t, str) and not t.startswith("base_model:")] if isinstance(tags, list) else []
    )
    if adapter:
        inherited["library_name"] = "peft"
    inherited.setdefault("library_name", "transformers")
    if inherited.get("pipeline_tag") is None and (tag := pipeline_tag(config)):
        inherited["pipeline_tag"] = tag
    return ModelCardData(
        model_name=model_name,
        base_model=base_models or None,
        base_model_relation=("adapter" if adapter else "merge") if base_models else None,
        tags=list(dict.fromkeys([*tags, *EXPO_TAGS])),
        **inherited,
    )


def _card_body(record: dict[str, Any], card: AlignedCard, model_name: str, adapter: bool) -> str:
    """The card's text: what the model is, how to make it again, what was handled, then the aligned card."""
    aligned, sft = record["aligned"], record["sft"]
    notes = "".join(f"- {n}\n" for n in record.get("notes") or []) or "- nothing\n"
    rules = "; ".join(r["rule"] for r in record.get("rules") or []) or "none (one α for every tensor)"
    skipped = record.get("side_files", {}).get("skipped") or {}
    left_out = [f"- `{path}`: {reason}\n" for path, reason in skipped.items()]
    if "model-index" in card.data:
        left_out.append("- the aligned card's `model-index` evaluation results: they are the aligned model's\n")
    not_copied = "\nNot carried over from the aligned model (expo's side-file policy):\n" + "".join(left_out)
    not_copied = not_copied if left_out else ""
    aligned_text = f"\n## The aligned model's card\n\n{card.text}\n" if card.text else ""
    tuning = _tuning_section(record["tuning"]) if record.get("tuning") else ""
    what = f"\nIt is a **PEFT LoRA adapter** for `{_label(sft)}`: load it with `PeftModel.from_pretrained`.\n"
    what = what if adapter else ""
    return f"""# {model_name}

This model is an **ExPO** (model extrapolation) of the aligned model `{_label(aligned)}` away from its SFT
starting point `{_label(sft)}`, made with expo {record["expo_version"]} and no training
([Zheng et al., "Model Extrapolation Expedites Alignment", ACL 2025](https://arxiv.org/abs/2404.16792)).
{what}
    {record["formula"]}

| | |
|---|---|
| α | {record["alpha"]:g} |
| aligned model (θ_aligned) | `{_label(aligned)}` |
| SFT model (θ_sft) | `{_label(sft)}` |
| per-tensor α | {rules} |

To make it again from the same inputs:

    {reproduce_command(record, model_name)}

α = 0 would give the aligned model back unchanged, α = −1 the SFT model. Every floating-point tensor was
computed in float32 (float64 for float64 tensors) and rounded once to its output dtype; the tokenizer, chat
template, generation config and any custom code are the aligned model's files, copied unchanged.

Handled automatically:
{notes}{not_copied}{tuning}{aligned_text}"""


def _tuning_section(tuning: dict[str, Any]) -> str:
    """How `expo tune` chose α: the candidates' rewards and paired gains against the aligned model (α = 0) on the
    selection prompts, and the confirmation on held-out ones."""
    decoding = tuning.get("decoding", {})
    split = tuning.get("split", {})
    rows = "".join(
        f"| {c['alpha']:g} | {c['reward'][0]:.4g} [{c['reward'][1]:.4g}, {c['reward'][2]:.4g}] | "
        + (
            "baseline"
            if c["alpha"] == 0
            else f"{c['gain'][0]:+.4g} [{c['gain'][1]:+.4g}, {c['gain'][2]:+.4g}]"
            + (" (significant)" if c.get("significant") else "")
        )
        + f" | {c['length']:g} | {c.get('truncated', 0):.0%} |\n"
        for c in tuning.get("candidates", [])
    )
    warnings = "".join(f"- {w}\n" for w in tuning.get("warnings", []))
    confirmation = tuning.get("confirmation", {})
    return f"""
## How α was chosen

With `expo tune`: {tuning.get("prompts")} prompts, {split.get("selection")} to choose α and {split.get("confirmation")}
held out to confirm it. Each candidate α generated responses to the selection prompts (at most
{decoding.get("max_new_tokens")} new tokens, temperature {decoding.get("temperature")}, top-p {decoding.get("top_p")},
top-k {decoding.get("top_k")}, {decoding.get("samples_per_prompt")} sample(s) per prompt, the same seeds for every
candidate), scored by `{tuning.get("reward")}`. Gains are paired bootstrap intervals over prompts, 95% for all
candidates at once.

| α | mean reward [95% CI] | gain over α = 0 [simultaneous 95% CI] | mean length (tokens) | cut at the limit |
|---|---|---|---|---|
{rows}
α = {tuning.get("chosen_alpha"):g}: {tuning.get("reason")} (the rule: {tuning.get("rule")}).

Held out: {confirmation.get("note", "nothing was confirmed")}.
{warnings}"""
