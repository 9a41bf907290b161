"""The version of medfcn: one place, read by pyproject.toml (setuptools dynamic version), the package face
and every module that records it (code inside the package imports it from here, never from ``medfcn``)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
