"""Training: the loop over epochs (engine), augmentation, regularisation, schedules."""
