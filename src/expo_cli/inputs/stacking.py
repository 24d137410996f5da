"""How two LoRA adapters stack, decided from evidence, never guessed.

"on-sft": the aligned adapter was trained on the merged SFT model, θ_aligned = W + s₁B₁A₁ + s₂B₂A₂ (its config names
the SFT adapter, or, TRL's documented route, it names the same base as the SFT adapter because merge_and_unload
keeps the model's name). "continued": the aligned adapter continued training the SFT adapter's factors,
θ_aligned = W + s₂B₂A₂. Configs that name the same base cannot tell these apart; the factors can. A continued
adapter starts from A₁, and training moves A little: its rows stay almost parallel to A₁'s. A fresh adapter's A is a
new random draw, whose rows are nearly orthogonal to A₁'s (|cos| about 1/√in_features). Ambiguous evidence is
refused: `--adapter-stack` says it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .adapters import Adapter

CONTINUED = 0.8  # mean best |cos| of A₂'s rows with A₁'s at least this: continued
FRESH = 0.5  # at most this (and near random): trained fresh on the merged SFT model


def stack_kind(sft: Adapter | None, aligned: Adapter | None, sft_spec: str, given: str | None) -> str | None:
    """How two adapters relate: --adapter-stack; the aligned config naming the SFT adapter ("on-sft"); or, when both
    name the same base, the evidence of their factors."""
    if sft is None or aligned is None:
        return None
    if given:
        return given
    if aligned.base_model and same_model(aligned.base_model, sft_spec):
        return "on-sft"
    if aligned.base_model and sft.base_model and same_model(aligned.base_model, sft.base_model):
        similarity = factor_similarity(sft, aligned)
        if similarity is not None and similarity >= CONTINUED:
            return "continued"
        if similarity is not None and similarity <= FRESH:
            return "on-sft"
        seen = "they share no module" if similarity is None else f"their lora_A rows have mean |cos| {similarity:.2f}"
        raise UsageError(
            f"--aligned {aligned.path.name} and --sft {sft.path.name} name the same base and {seen}: pass "
            "--adapter-stack continued (it continued the SFT adapter) or on-sft (trained anew on the merged SFT model)"
        )
    raise UsageError(
        f"--aligned {aligned.path.name} and --sft {sft.path.name} are both adapters and their configs "
        "do not tell how: pass --adapter-stack on-sft (trained on the merged SFT model) or continued "
        "(it continued the SFT adapter; both relative to the base)"
    )


def same_model(declared: str, given: str) -> bool:
    """Whether a config's base_model_name_or_path and a --sft value name the same model (paths by folder name)."""
    return declared == given or Path(declared.rstrip("/")).name == Path(given.rstrip("/")).name


def factor_similarity(sft: Adapter, aligned: Adapter) -> float | None:
    """Over the modules both adapters update: the mean, over A₂'s rows, of the largest |cos| with a row of A₁
    (None when they share no module)."""
    import torch  # torch loads on first use, not with the package

    scores = []
    with sft.weights, aligned.weights:
        for name, second in aligned.low_rank.items():
            first = sft.low_rank.get(name)
            if first is None or first.a.shape[1] != second.a.shape[1]:
                continue
            a1, a2 = (
                torch.nn.functional.normalize(w.weights.flat(u.a, 0, u.a.numel).double().view(u.a.shape), dim=1)
                for w, u in ((sft, first), (aligned, second))
            )
            scores.append((a2 @ a1.T).abs().max(dim=1).values.mean().item())
    return sum(scores) / len(scores) if scores else None
