"""The errors nasfpn reports to a user as one line (exit status 2), never as a traceback.

Each names the file, node or field at fault and the reason. They live here, torch-free, so
that the command line can catch them all without importing what raises them.
"""


class NasfpnError(Exception):
    """Base of every error that is the input's fault, not the program's."""


class UsageError(NasfpnError):
    """Options that contradict each other or name something that does not exist."""


class GenotypeError(NasfpnError, ValueError):
    """A genotype that is not a valid neck; the message names the node and the reason."""


class DatasetError(NasfpnError, ValueError):
    """A COCO dataset that cannot be used; the message names the file and the image/annotation."""


class BackboneError(NasfpnError, ValueError):
    """An unknown backbone or a checkpoint that does not fit it; one line naming the file."""


class RunError(NasfpnError, ValueError):
    """A run folder that cannot be read (a broken config.json); the message names the file."""


class TrainingError(NasfpnError, RuntimeError):
    """A trial that cannot go on (a NaN loss); the message says at which step."""
