"""Predictive maintenance: labels, shared features, training, evaluation, compilation, pipeline."""
