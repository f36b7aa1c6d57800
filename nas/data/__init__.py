"""Datasets: the embedded multi-scale shapes dataset (``synth``) and any COCO-format one (``coco``)."""

from nas.data.coco import CocoDetection, DatasetError, collate, find_split
from nas.data.synth import CATEGORIES, render, synthesize

__all__ = ["CATEGORIES", "CocoDetection", "DatasetError", "collate", "find_split", "render", "synthesize"]
