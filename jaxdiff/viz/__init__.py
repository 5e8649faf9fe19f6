"""Figures: image grids, overlays (matplotlib/PIL), 3D slice montages and Plotly volume views (volume)."""
