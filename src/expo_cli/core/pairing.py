"""Pairing the two checkpoints tensor by tensor, from headers alone, before any arithmetic.

The output has exactly the aligned checkpoint's tensor names. Each is paired with the SFT tensor of the
same name, with two reported exceptions: tied embeddings (one side stores `lm_head.weight`, the other
ties it to the input embedding) and a vocabulary the aligned model grew (extra rows copied as they are).
Anything else that differs stops the run here, naming the tensors, before any output exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import MismatchError
from .sources import TensorInfo, TensorSource, dtype_name, itemsize

# Output heads that `tie_word_embeddings` ties to the input embedding, and the input embeddings.
OUTPUT_HEAD = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$")
INPUT_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings|shared)\.weight$")
# Non-persistent buffers that older transformers versions saved: present in one checkpoint only, harmlessly.
LEGACY_BUFFERS = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias)$")
SHOWN = 3  # offending tensors named in one error line
IDENTICAL = "the two checkpoints are identical: extrapolation changes nothing; is --aligned the trained one?"


@dataclass(frozen=True)
class TensorPair:
    """One output tensor and the input tensors it is made from: the aligned one, and its SFT counterpart."""

    name: str
    aligned: TensorInfo
    sft: TensorInfo | None  # None: copied from the aligned model unchanged
    out_dtype: str  # safetensors code
    shared: int  # leading elements extrapolated; the rest (grown vocabulary rows) copied from aligned

    @property
    def shape(self) -> tuple[int, ...]:
        return self.aligned.shape

    @property
    def numel(self) -> int:
        return self.aligned.numel

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.out_dtype)


@dataclass
class Pairing:
    """How the tensors of two checkpoints pair up, decided from their headers alone."""

    tensors: list[TensorPair]
    notes: list[str]  # what was handled automatically, for the user to read

    def dominant_dtype(self) -> str | None:
        """The dtype holding most of the output's floating bytes: what config.json should announce."""
        by_dtype: dict[str, int] = {}
        for t in self.tensors:
            if t.aligned.is_float:
                by_dtype[t.out_dtype] = by_dtype.get(t.out_dtype, 0) + t.nbytes
        return dtype_name(max(by_dtype, key=by_dtype.__getitem__)) if by_dtype else None

    @property
    def bytes_read(self) -> int:
        return sum(t.aligned.nbytes + (t.sft.nbytes if t.sft else 0) for t in self.tensors)

    @property
    def extrapolated(self) -> int:
        return sum(1 for t in self.tensors if t.sft is not None)


def _ties(config: dict[str, Any]) -> bool | None:
    value = config.get("tie_word_embeddings")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("tie_word_embeddings")
    return value if isinstance(value, bool) else None


def _input_embedding(ckpt: TensorSource, like: TensorInfo) -> TensorInfo | None:
    """The one input embedding `like` (an output head) is tied to, matched by name and width."""
    found = [t for name, t in ckpt.tensors.items() if INPUT_EMBEDDING.search(name) and t.shape[1:] == like.shape[1:]]
    return found[0] if len(found) == 1 else None


def _shape(info: TensorInfo) -> str:
    return f"{info.dtype}{list(info.shape)}"


def check_configs(sft: TensorSource, aligned: TensorSource, allow_architecture_mismatch: bool = False) -> None:
    """Both configs must describe the same architecture (a different base is the commonest user mistake)."""
    if allow_architecture_mismatch:
        return
    for key in ("model_type", "architectures"):
        a, s = aligned.config.get(key), sft.config.get(key)
        if a != s:
            raise MismatchError(
                f"config.json {key} differs: sft {s!r} vs aligned {a!r}; --sft must be the checkpoint --aligned was "
                "trained from (pass --allow-architecture-mismatch if you are sure)"
            )


def pair_tensors(sft: TensorSource, aligned: TensorSource, out_dtype: str | None = None) -> Pairing:
    """Pair every aligned tensor with its SFT counterpart; raise MismatchError naming what cannot be paired.

    Args:
        out_dtype: safetensors code for every floating output tensor, or None to keep each aligned dtype.
    """
    notes: list[str] = []
    problems: list[str] = []
    pairs: list[TensorPair] = []
    used: set[str] = set()
    for name, a in aligned.tensors.items():  # file order: the output is written as the aligned model is read
        s = sft.tensors.get(name)
        if s is None and OUTPUT_HEAD.search(name) and _ties(sft.config) is not False:
            s = _input_embedding(sft, a)
            if s is not None:
                notes.append(f"tied embeddings: the SFT model ties {name} to {s.name}; extrapolating from it")
        if s is None:
            if LEGACY_BUFFERS.search(name):
                notes.append(f"{name}: a buffer only the aligned model stores; copied unchanged")
                pairs.append(TensorPair(name, a, None, a.dtype, 0))
            else:
                problems.append(f"{name} {_shape(a)} is missing from sft")
            continue
        used.add(s.name)
        pair = _pair(name, s, a, out_dtype, notes, problems)
        if pair is not None:
            pairs.append(pair)
    _check_unpaired(sft, aligned, used, notes, problems)
    if problems:
        more = f" (+{len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise MismatchError(
            f"the checkpoints do not match: {'; '.join(problems[:SHOWN])}{more}; "
            "--sft must be the checkpoint --aligned was trained from"
        )
    return Pairing(tensors=pairs, notes=notes)


def _pair(
    name: str, s: TensorInfo, a: TensorInfo, out_dtype: str | None, notes: list[str], problems: list[str]
) -> TensorPair | None:
    """One aligned tensor and its SFT counterpart: extrapolated (its shared leading rows, when the vocabulary
    grew), copied (integer tensors), or a problem."""
    if a.is_float != s.is_float:
        problems.append(f"{name}: sft {_shape(s)} vs aligned {_shape(a)} (floating vs integer)")
        return None
    if not a.is_float:
        if a.shape != s.shape:
            problems.append(f"{name}: sft {_shape(s)} vs aligned {_shape(a)}")
        return TensorPair(name, a, None, a.dtype, 0)
    shared = a.numel
    if a.shape != s.shape:
        grown = (
            len(a.shape) >= 1
            and a.shape[1:] == s.shape[1:]
            and a.shape[0] > s.shape[0]
            and (OUTPUT_HEAD.search(name) or INPUT_EMBEDDING.search(name))
        )
        if not grown:
            problems.append(f"{name}: sft {_shape(s)} vs aligned {_shape(a)}")
            return None
        shared = s.numel  # row-major: the shared rows are the leading elements
        notes.append(
            f"vocabulary grown: {name} has {a.shape[0] - s.shape[0]} new rows in the aligned model "
            f"({s.shape[0]} -> {a.shape[0]}); shared rows extrapolated, new rows copied from aligned"
        )
    if s.dtype != a.dtype:
        notes.append(f"{name}: sft is {s.dtype}, aligned {a.dtype}; computed in float32 or wider")
    return TensorPair(name, a, s, out_dtype or a.dtype, shared)


def _check_unpaired(
    sft: TensorSource, aligned: TensorSource, used: set[str], notes: list[str], problems: list[str]
) -> None:
    """SFT tensors no aligned tensor took: a head the aligned model ties, a legacy buffer, or a problem."""
    for name, s in sft.tensors.items():
        if name in used or name in aligned.tensors:
            continue
        if OUTPUT_HEAD.search(name) and _ties(aligned.config) is not False and _input_embedding(aligned, s):
            notes.append(f"tied embeddings: the aligned model ties {name} to its input embedding; the output does too")
        elif LEGACY_BUFFERS.search(name):
            notes.append(f"{name}: a buffer only the SFT model stores; ignored")
        else:
            problems.append(f"{name} {_shape(s)} is missing from aligned")
