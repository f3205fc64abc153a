"""Training recipes: stage A alignment (``align``), checkpoints."""
