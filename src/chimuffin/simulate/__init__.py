"""Simulations of a person labeling: the simulated reviewer, the round-based loop and the
sitting in wall-clock time with background retraining."""
