"""A tune as it runs and as it is kept: the run folder (resume, looks), the evaluator that fills it batch by batch,
the result and its report."""
