"""Scoring methods. Each is one file registered in :mod:`lmmiqa.registry`."""
