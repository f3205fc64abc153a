"""ICG models: meta-token encoder, user refiner, cover adapter (+ attention processors)."""
