"""The training engine: one optimisation step (``step``), the loop around it (``trainer``), resumable state
and signal handling (``resume``). It knows nothing of run directories or reports."""
