"""Simulations of a person labeling: the simulated reviewer and the sitting in wall-clock time
with background retraining (`chimuffin loop`)."""
