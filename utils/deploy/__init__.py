"""Trained students on disk and in use: checkpoints, export for deployment, prediction."""
