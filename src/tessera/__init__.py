"""Tessera: a datacenter operating system."""

__version__ = "0.1.0"
