"""Distillation: the methods (a loss per method, by name), the per-fold teachers and the teacher view cache."""
