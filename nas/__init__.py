"""nasfpn: neural architecture search for the feature-pyramid necks of object detectors."""

from nas.builder import GenotypeNeck, build_neck
from nas.genotype import Genotype, GenotypeError, Node, load_genotype

__all__ = ["Genotype", "GenotypeError", "GenotypeNeck", "Node", "build_neck", "load_genotype"]
__version__ = "0.1.0"
