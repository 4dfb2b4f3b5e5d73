"""Drone models, synthetic data, datasets and bag I/O."""
