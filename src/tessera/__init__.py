"""Tessera: a datacenter operating system."""
