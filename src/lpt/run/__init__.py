"""Runs: the run directory's files (``files``), reloading a run (``load``), training a config into one
(``train``), importing the published checkpoint as one (``official``), predicting with one (``predict``)."""
