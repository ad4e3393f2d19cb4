"""Local mode: the real app against moto plus a small emulation of what moto lacks."""

from prepost import ROOT

__all__ = ["ROOT"]
