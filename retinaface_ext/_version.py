"""The package's version, in a module of its own that imports nothing, so that any layer
can read it without importing the package above it."""

__version__ = "0.2.0"
