"""What a candidate is measured on and by: the prompts (prompts) and the reward that scores each response
(rewards: a reward model or a function, cached, keyed by the scoring code)."""
