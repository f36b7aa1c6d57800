"""What makes a generated ``neck.py`` safe to import: text comes only from fixed lists.

``numeral`` writes a checked integer, ``safe_label`` lets a name into a docstring only when it
is a plain label, and ``check_source`` -- the second line of defence -- parses the finished
source and refuses it unless every import, name, attribute and string constant is on this
module's lists.
"""

from __future__ import annotations

import ast
import re

SAFE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
MAX_WIDTH = 1 << 16


def safe_label(text: object) -> str | None:
    """``text`` when it is a plain label (letters, digits, ``_ . + -``; at most 64), else None."""
    return text if isinstance(text, str) and SAFE_LABEL.fullmatch(text) else None


def numeral(value: object, low: int = 0, high: int = MAX_WIDTH) -> str:
    """The numeral of an ``int`` (a bool is not one) within [low, high]; ValueError otherwise."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"expected an integer in {low}..{high}, got {value!r}")
    return str(value)


_IMPORTS = {
    ("__future__", "annotations", None),
    ("collections", "OrderedDict", None),
    ("torch", None, None),
    ("torch.nn.functional", None, "F"),
    ("torch", "Tensor", None),
    ("torch", "nn", None),
}
_NAMES = frozenset(
    """
    self super list tuple dict str isinstance range len min int None ValueError annotations
    torch nn F Tensor OrderedDict Outputs IN_CHANNELS CHANNELS REPEATS
    conv_norm up maxpool subsample attention conv_down relu_conv_down conv relu_conv swish_sepconv
    ASPP widths width dilation padding branches branch pool pooled zip cat expand AdaptiveAvgPool2d
    Fusion Resample Node level_sizes Cell FirstCell Neck __init__ forward
    cin cout k stride x size coarser finer num_inputs xs w out i project down resample fusion post
    depthwise sizes c size s c3 c4 c5 p3 p4 p5 p6 p7 s3 s4 s5 s6 s7 features cell _
    Conv2d BatchNorm2d GroupNorm ReLU SiLU Sequential ModuleList ModuleDict Module Parameter
    interpolate max_pool2d relu sigmoid amax ones shape values sum weight nodes cells extra_levels
    in_channels out_channels append
    """.split()
)
_NUMBERED = re.compile(r"[xn][0-9]{1,6}")
_STRINGS = frozenset(
    {"nearest", "P3", "P4", "P5", "P6", "P7"}
    | {"each of C4, C5 must be the ceil-half of the level below, as a ResNet's are"}
)
_DOC_CHARS = re.compile(r"[ -~\n]*")  # printable ASCII and newlines


def check_source(source: str) -> None:
    """Refuses (ValueError) generated code that uses anything outside fixed lists.

    Imports: torch, ``collections.OrderedDict``. Names, attributes, arguments: a fixed set, or
    ``x<N>``/``n<N>``. String constants: a fixed set, dict keys that are numerals, and
    docstrings of printable ASCII without backslashes.
    """
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.name, None, alias.asname) not in _IMPORTS:
                    raise ValueError(f"generated code imports {alias.name!r}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (node.module, alias.name, alias.asname) not in _IMPORTS:
                    raise ValueError(f"generated code imports {alias.name!r} from {node.module!r}")
        elif isinstance(node, ast.Name):
            _check_name(node.id)
        elif isinstance(node, ast.Attribute):
            _check_name(node.attr)
        elif isinstance(node, ast.arg):
            _check_name(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            _check_name(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                if not _DOC_CHARS.fullmatch(node.value) or "\\" in node.value:
                    raise ValueError("generated docstring holds characters outside printable ASCII")
            elif node.value not in _STRINGS and not node.value.isdigit():
                raise ValueError(f"generated code holds the string constant {node.value[:40]!r}")
        elif isinstance(node, ast.Constant) and not isinstance(node.value, int | float | type(None)):
            raise ValueError(f"generated code holds a constant of type {type(node.value).__name__}")
        elif isinstance(node, ast.Lambda | ast.Global | ast.Nonlocal | ast.AsyncFunctionDef | ast.Await):
            raise ValueError(f"generated code holds a {type(node).__name__}")


def _check_name(name: str) -> None:
    if name not in _NAMES and not _NUMBERED.fullmatch(name):
        raise ValueError(f"generated code uses the name {name!r}")
