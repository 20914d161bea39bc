"""The package version, in a module of its own so that any module can read it without importing the package's
front door (``lmmiqa/__init__``), which imports the evaluation runner lazily: imports point one way."""

__version__ = "0.1.0"
