"""Background retraining: models trained on a throwaway copy of the workspace while a person
reviews (the review page and the simulated sitting both use it)."""
