"""Datasets: the embedded multi-scale shapes dataset (``synth``, numpy and PIL only) and any
COCO-format one (``coco``, torch). Import the module you need: the package imports neither."""
