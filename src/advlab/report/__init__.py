"""Figures and tables written into run directories."""
