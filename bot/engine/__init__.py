"""Generation: the batching engine, the serial baseline, the tool-call constraint, the response model."""
