"""Pairing two checkpoints from their headers alone: what is extrapolated, tied, grown or copied, what is refused."""

from __future__ import annotations

import pytest
import torch

from expo_cli.core.pairing import pair_tensors
from expo_cli.errors import MismatchError
from expo_cli.inputs.checkpoint import load_checkpoint
from helpers import VOCAB, build_model, llama_config, make_pair, save


def opened(pair):
    sft, aligned = pair
    return load_checkpoint(sft, "sft"), load_checkpoint(aligned, "aligned")


def test_every_aligned_tensor_pairs_with_its_sft_namesake(tmp_path):
    sft, aligned = opened(make_pair(tmp_path))
    pairing = pair_tensors(sft, aligned)
    assert [t.name for t in pairing.tensors] == list(aligned.tensors)  # the aligned file order: the write order
    assert all(t.sft is not None and t.sft.name == t.name and t.shared == t.numel for t in pairing.tensors)
    assert {t.out_dtype for t in pairing.tensors} == {"BF16"} and pairing.notes == []
    assert pairing.extrapolated == len(aligned.tensors)
    assert pairing.bytes_read == sum(i.nbytes for s in (sft, aligned) for i in s.tensors.values())


def test_an_output_dtype_applies_to_every_floating_tensor(tmp_path):
    pairing = pair_tensors(*opened(make_pair(tmp_path)), "F32")
    assert {t.out_dtype for t in pairing.tensors} == {"F32"} and pairing.dominant_dtype() == "float32"


def test_a_grown_vocabulary_extrapolates_the_shared_rows_and_copies_the_new_ones(tmp_path):
    sft, aligned = opened(make_pair(tmp_path, aligned_vocab=VOCAB + 8))
    pairing = pair_tensors(sft, aligned)
    grown = {t.name: t for t in pairing.tensors if t.shared != t.numel}
    assert set(grown) == {"model.embed_tokens.weight", "lm_head.weight"}
    for t in grown.values():
        assert t.shape[0] == VOCAB + 8 and t.shared == t.sft.numel == VOCAB * t.shape[1]  # the leading rows
    assert sum("vocabulary grown" in note for note in pairing.notes) == 2


def test_tied_sft_embeddings_pair_the_aligned_head_with_the_input_embedding(tmp_path):
    sft, aligned = opened(make_pair(tmp_path, sft_tied=True, aligned_tied=False))
    assert "lm_head.weight" not in sft.tensors  # transformers saves a tied head once
    head = next(t for t in pair_tensors(sft, aligned).tensors if t.name == "lm_head.weight")
    assert head.sft is not None and head.sft.name == "model.embed_tokens.weight"


def test_tensors_only_one_side_has_are_refused_naming_three_and_counting_the_rest(tmp_path):
    sft = save(build_model(llama_config(num_hidden_layers=1), 0), tmp_path / "sft", torch.bfloat16)
    _, aligned = make_pair(tmp_path / "pair")
    with pytest.raises(MismatchError) as refused:
        pair_tensors(load_checkpoint(sft, "sft"), load_checkpoint(aligned, "aligned"))
    message = str(refused.value)
    assert message.count("is missing from sft") == 3 and "(+6 more)" in message  # layer 1: 9 tensors
    assert "--sft must be the checkpoint --aligned was trained from" in message
