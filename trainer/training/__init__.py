"""Training: the loop, the batched engine, batches, evaluation and capture, logging through a Sink."""
