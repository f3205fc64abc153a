"""Recipes of coverworld-tiny: each module has `train(out, *, resume, seed)` and `evaluate(path, world_dir)`."""
