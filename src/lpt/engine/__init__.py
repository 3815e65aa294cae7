"""The training loop, methods, evaluation, checkpoints and runs."""
