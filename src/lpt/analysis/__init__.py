"""Analyses of trained runs: shot-split metrics."""
