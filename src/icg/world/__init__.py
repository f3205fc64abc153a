"""CoverWorld: a simulated cover platform whose ground truth is known and hidden from training."""
