"""Data, transforms, losses, the training loop, schedules, metrics, logging and
configuration. Importing this package does not import Paddle."""
