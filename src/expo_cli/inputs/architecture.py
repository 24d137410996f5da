"""What a checkpoint's architecture says that its tensors cannot: which layers store their weight transposed (GPT-2's
Conv1D, (in, out)), and whether the output embedding is tied to the input one. Asked only where an adapter's
update depends on it (a square target, an update to a tied head), by building the model from the folder's
config.json on the meta device (no memory, no weights read)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Architecture:
    conv1d: frozenset[str]  # module names
    tied: tuple[str, str] | None  # (output embedding weight, input embedding weight) when they are one parameter

    def is_conv1d(self, module: str) -> bool:
        """Whether `module` (a checkpoint's module name, possibly without the model's outer prefix) is a Conv1D."""
        return any(module == m or module.endswith(f".{m}") or m.endswith(f".{module}") for m in self.conv1d)


@functools.cache
def architecture(folder: Path) -> Architecture | None:
    """The architecture in `folder`'s config.json; None when transformers cannot build it (no config, an unknown or
    remote-code model): the caller decides what not knowing means."""
    import torch  # torch loads on first use, not with the package

    try:
        from transformers import AutoConfig, AutoModelForCausalLM  # transformers loads when a model does
        from transformers.pytorch_utils import Conv1D  # transformers loads when a model does

        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # anything transformers raises means "cannot tell"
        return None
    names = {id(module): name for name, module in model.named_modules()}
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = None
    ties = getattr(config.get_text_config(), "tie_word_embeddings", False)
    if ties and output is not None and embedding is not None:
        tied = (f"{names[id(output)]}.weight", f"{names[id(embedding)]}.weight")
    conv1d = frozenset(name for name, module in model.named_modules() if isinstance(module, Conv1D))
    return Architecture(conv1d, tied)
