"""The merged folder is a model transformers loads as it is: no missing or unexpected keys, right logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import expo_cli
from helpers import assert_merged, make_pair, read_all, reference

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 65, 2, 7]])


def load(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


def test_llama_loads_and_its_logits_are_the_reference_models(tmp_path, llama_pair):
    sft, aligned = llama_pair
    expo_cli.merge(sft, aligned, tmp_path / "out", 0.5, progress=False)
    merged = load(tmp_path / "out")
    assert merged.dtype == torch.bfloat16

    s, a = read_all(sft), read_all(aligned)
    expected = load(aligned)  # the same architecture and buffers, loaded the same way
    expected.load_state_dict({k: reference(s[k], a[k], 0.5).to(torch.bfloat16) for k in a})
    with torch.no_grad():
        torch.testing.assert_close(merged(TOKENS).logits, expected(TOKENS).logits)


@pytest.mark.parametrize(("sft_tied", "aligned_tied"), [(True, False), (False, True), (True, True)])
def test_gpt2_tied_embeddings(tmp_path, sft_tied, aligned_tied):
    sft, aligned = make_pair(tmp_path, arch="gpt2", dtype=torch.float32, sft_tied=sft_tied, aligned_tied=aligned_tied)
    result = expo_cli.merge(sft, aligned, tmp_path / "out", 0.5, progress=False)
    merged = assert_merged(tmp_path / "out", sft, aligned, 0.5)
    assert ("lm_head.weight" in merged) == (not aligned_tied)
    if sft_tied != aligned_tied:
        assert any("tied embeddings" in note for note in result.notes)
    model = load(tmp_path / "out")
    assert model.config.tie_word_embeddings == aligned_tied
    wte = merged["transformer.wte.weight"]
    head = model.get_output_embeddings().weight.detach()
    assert torch.equal(head, wte if aligned_tied else merged["lm_head.weight"])
    if not aligned_tied:  # the SFT's head was its embedding: the output head extrapolates from it
        s, a = read_all(sft), read_all(aligned)
        sft_head = s.get("lm_head.weight", s["transformer.wte.weight"])
        torch.testing.assert_close(merged["lm_head.weight"], reference(sft_head, a["lm_head.weight"], 0.5).float())


def test_grown_vocabulary_extrapolates_shared_rows_and_copies_new_ones(tmp_path, expo):
    sft, aligned = make_pair(tmp_path, dtype=torch.bfloat16, aligned_vocab=104)
    run = expo("merge", "--sft", sft, "--aligned", aligned, "--output", tmp_path / "out", "--alpha", "0.5")
    assert run.code == 0, run.stderr
    assert "vocabulary grown: model.embed_tokens.weight has 8 new rows" in run.stderr
    assert "vocabulary grown: lm_head.weight has 8 new rows" in run.stderr
    merged, a = read_all(tmp_path / "out"), read_all(aligned)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape == (104, 32)
        assert torch.equal(merged[name][96:], a[name][96:])  # new rows: the aligned model's, unchanged
    assert_merged(tmp_path / "out", sft, aligned, 0.5)  # shared rows: the formula
    assert load(tmp_path / "out").config.vocab_size == 104
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 104
