"""The search: the driver, Ray Tune's trials, the run folder, objectives, compare and calibrate."""
