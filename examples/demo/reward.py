"""The demo pair's reward for `expo tune`: the share of "aligned" in a response.

The demo's "alignment" (examples/make_tiny_pair.py) made the aligned model say "aligned" more often than the SFT
model; ExPO amplifies that step, so this reward should rise with α, until the text degenerates.
"""


def aligned_share(prompt: str, response: str) -> float:
    words = response.split()
    return words.count("aligned") / max(len(words), 1)
