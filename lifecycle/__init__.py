"""The experiment lifecycle: one module per `minimind` verb, plus the run pipeline."""
