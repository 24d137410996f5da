"""Which α, and how sure: the statistics, the rule with its margin, the search, the split into selection and
held-out prompts, the looks at the held-out prompts, the power calculation, and the procedure that runs them on
candidates however they were made (a generation run, or a simulation in the tests)."""
