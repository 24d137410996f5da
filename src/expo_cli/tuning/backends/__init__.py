"""How responses are made: prompts encoded and sampled with fixed seeds (generation), θ(α) written into one loaded
model in place (candidates), or into one vLLM engine's weights (serving, vllm_worker)."""
