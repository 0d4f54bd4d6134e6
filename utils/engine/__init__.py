"""The training engine: one epoch, evaluation, fit with early stopping, the optimizer
and its schedule, the saved training state."""
