"""nasfpn: neural architecture search for the feature-pyramid necks of object detectors."""

from typing import Any

from nas.errors import GenotypeError
from nas.genotype import Genotype, Node, load_genotype

__all__ = ["Genotype", "GenotypeError", "GenotypeNeck", "Node", "build_neck", "load_genotype"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The builder imports torch, which commands that only read a study (status, report,
    # dashboard) should not wait for: it is imported when first asked for.
    if name in ("GenotypeNeck", "build_neck"):
        from nas.nets import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")
