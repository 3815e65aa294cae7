"""Studies: methods x seeds x settings as ordinary lpt runs, launched here or on Slurm, reported together.

``spec`` reads and expands a study file, ``directory`` is the study directory and the state of its runs,
``launch`` runs them on this machine (``slurm``: on a Slurm cluster through submitit), ``report`` aggregates them.
"""
