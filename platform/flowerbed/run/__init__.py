"""Running a federation: a run directory prepared, then simulated on one machine."""
