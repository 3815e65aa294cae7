"""Analyses of finished runs, read through ``lpt.run``: reports, comparisons, feature geometry, data statistics."""
