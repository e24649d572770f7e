"""simpleunet.train: models, data, training and evaluation (the toolkit side, needs torch)."""
