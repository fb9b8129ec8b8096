"""Matplotlib figures of ufm results: each function takes results and returns a Figure."""

from __future__ import annotations
