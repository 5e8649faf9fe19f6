"""Figures: image grids, overlays (matplotlib/PIL)."""
