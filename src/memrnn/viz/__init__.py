"""Plots: learning curves, hidden-state traces and heatmaps, spike rasters."""
