"""The code generator: a genotype and its build settings -> the source of a standalone neck module.

The generated ``neck.py`` imports only torch. Its ``Neck`` computes what ``nas.nets.builder``'s
``GenotypeNeck`` computes, op for op and in the same order (so outputs are equal, not just
close), and registers its weights under the builder's names, so either module loads the
other's ``state_dict``. Its ``forward`` methods hold one statement per node.

Safety: the source is made only from

- integers of the genotype (levels, entry indices) and of the build (widths, repeats), each
  checked to be an ``int`` (not a bool) and written as a numeral;
- op names, each looked up in a fixed table of code (a name the table lacks is an error);
- fixed text of this module.

No string from a genotype file reaches the code. The genotype is validated again here
(``Genotype.from_dict(genotype.to_dict())``), so an object put together in Python without the
file parser's type checks is held to the same rules. Labels (the genotype's, a run's or a
neck's name) appear only in the module docstring, and only when they are plain labels
(``SAFE_LABEL``); otherwise the docstring says the name is withheld. As a second line of
defence ``check_source`` parses the finished source and refuses it unless every import, name,
attribute and string constant comes from fixed lists.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from nas.genotype import (
    BACKBONE_INPUTS,
    COMBINES,
    DOWNSAMPLES,
    LEVELS,
    NUM_INPUTS,
    POSTS,
    UPSAMPLES,
    Genotype,
    GenotypeError,
    Word,
)

SAFE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
MAX_WIDTH = 1 << 16
MAX_REPEATS = 64
NORM_NAMES = ("bn", "gn", "none")
OUTPUT_NAMES = tuple(f"P{level}" for level in LEVELS)


def safe_label(text: object) -> str | None:
    """``text`` when it is a plain label (letters, digits, ``_ . + -``; at most 64), else None."""
    return text if isinstance(text, str) and SAFE_LABEL.fullmatch(text) else None


def _int(value: object, low: int = 0, high: int = MAX_WIDTH) -> str:
    """The numeral of an ``int`` (a bool is not one) within [low, high]; ValueError otherwise."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"expected an integer in {low}..{high}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class BuildSettings:
    """What ``nas.nets.builder.GenotypeNeck`` is built with besides the genotype."""

    in_channels: tuple[int, int, int]
    channels: int
    repeats: int = 1
    norm: str | None = "bn"

    def __post_init__(self) -> None:
        if not isinstance(self.in_channels, tuple | list) or len(self.in_channels) != BACKBONE_INPUTS:
            raise ValueError(f"in_channels: give the 3 widths of C3..C5, got {self.in_channels!r}")
        for width in (*self.in_channels, self.channels):
            _int(width, 1, MAX_WIDTH)
        _int(self.repeats, 1, MAX_REPEATS)
        if self.norm not in (*NORM_NAMES, None):
            raise ValueError(f"norm must be one of {', '.join(NORM_NAMES)}, got {self.norm!r}")
        object.__setattr__(self, "in_channels", tuple(self.in_channels))

    @property
    def norm_name(self) -> str:
        return self.norm or "none"


@dataclass(frozen=True)
class Facts:
    """What the docstring states besides the graph: size, cost, where the genotype came from."""

    params: int
    flops: int
    image_size: int
    origin: str = "neck"  # "run", "neck" or "file"
    label: str = ""  # the run's, neck's or file's name: shown only when it is a plain label
    trial: int | None = None
    ap: float | None = None
    has_weights: bool = False


# --- fixed code: each op name maps to the text that implements it ------------------------------

_CONV_NORM = {
    "bn": (
        "k x k conv with 'same' padding, then BatchNorm (the conv has no bias).",
        "[nn.Conv2d(cin, cout, k, stride, {padding}, bias=False), nn.BatchNorm2d(cout)]",
    ),
    "gn": (
        "k x k conv with 'same' padding, then GroupNorm with min(32, cout) groups (no conv bias).",
        "[nn.Conv2d(cin, cout, k, stride, {padding}, bias=False), nn.GroupNorm(min(32, cout), cout)]",
    ),
    "none": (
        "k x k conv with 'same' padding and a bias (this neck has no normalisation).",
        "[nn.Conv2d(cin, cout, k, stride, {padding})]",
    ),
}

_HELPERS = {
    "conv_norm": '''
def conv_norm(cin: int, cout: int, k: int, stride: int = 1{dilation}) -> list[nn.Module]:
    """{doc}"""
{code}
''',
    "up": '''
def up(x: Tensor, size: list[int]) -> Tensor:
    """Nearest-neighbour upsampling to ``size``, a finer level's height and width."""
    return F.interpolate(x, size=size, mode="nearest")
''',
    "maxpool": '''
def maxpool(x: Tensor, stride: int) -> Tensor:
    """Max-pool to a coarser level: ``stride`` 2 per level, kernel stride + 1."""
    return F.max_pool2d(x, stride + 1, stride, stride // 2)
''',
    "subsample": '''
def subsample(x: Tensor, stride: int) -> Tensor:
    """Every ``stride``-th pixel: a kernel-1 max-pool, as torchvision's LastLevelMaxPool."""
    return F.max_pool2d(x, 1, stride)
''',
    "attention": '''
def attention(coarser: Tensor, finer: Tensor) -> Tensor:
    """NAS-FPN's global attention: coarser + finer * sigmoid(global max-pool of coarser)."""
    return coarser + finer * torch.sigmoid(torch.amax(coarser, dim=(2, 3), keepdim=True))
''',
    "conv_down": '''
def conv_down(cin: int) -> nn.Sequential:
    """3x3 stride-2 conv, norm: down one level, to CHANNELS."""
    return nn.Sequential(*conv_norm(cin, CHANNELS, 3, 2))
''',
    "relu_conv_down": '''
def relu_conv_down(cin: int) -> nn.Sequential:
    """ReLU, 3x3 stride-2 conv, norm: down one level, to CHANNELS (RetinaNet's P7)."""
    return nn.Sequential(nn.ReLU(), *conv_norm(cin, CHANNELS, 3, 2))
''',
    "conv": '''
def conv() -> nn.Sequential:
    """Post op: 3x3 conv, norm."""
    return nn.Sequential(*conv_norm(CHANNELS, CHANNELS, 3))
''',
    "relu_conv": '''
def relu_conv() -> nn.Sequential:
    """Post op (NAS-FPN): ReLU, 3x3 conv, norm."""
    return nn.Sequential(nn.ReLU(), *conv_norm(CHANNELS, CHANNELS, 3))
''',
    "swish_sepconv": '''
def swish_sepconv() -> nn.Sequential:
    """Post op (BiFPN): swish, depthwise 3x3 conv, pointwise 1x1 conv, norm."""
    depthwise = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS, bias=False)
    return nn.Sequential(nn.SiLU(), nn.Sequential(depthwise, *conv_norm(CHANNELS, CHANNELS, 1)))
''',
    "aspp": '''
class ASPP(nn.Module):
    """Post op (DetectoRS' ASPP): a 1x1 conv, 3x3 convs with dilations 3 and 6 (each conv, norm, ReLU)
    and global average pooling, 1x1 conv, ReLU, broadcast back; a quarter of CHANNELS each, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        widths = [(CHANNELS + k) // 4 for k in range(4)]
        self.branches = nn.ModuleList(
            [nn.Sequential(*conv_norm(CHANNELS, widths[0], 1), nn.ReLU())]
            + [
                nn.Sequential(*conv_norm(CHANNELS, width, 3, 1, dilation), nn.ReLU())
                for width, dilation in zip(widths[1:3], (3, 6))
            ]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(CHANNELS, widths[3], 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return torch.cat([*(branch(x) for branch in self.branches), pooled], dim=1)
''',
    "Fusion": '''
class Fusion(nn.Module):
    """BiFPN's fast normalised fusion: sum_i w_i x_i / (eps + sum_j w_j), w = relu(weight)."""

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))

    def forward(self, xs: list[Tensor]) -> Tensor:
        w = F.relu(self.weight)
        w = w / (w.sum() + 1e-4)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out
''',
    "Resample": '''
class Resample(nn.Module):
    """The weights that bring one input to a node's level and width.

    ``project``: a 1x1 conv + norm from ``project`` channels to CHANNELS, where widths differ;
    ``down``: a stride-2 conv. Pooling and upsampling have no weights: ``forward`` of the cell
    does them. An empty ``Resample()`` (an input that is pooled or upsampled only) keeps the
    next input's weights at the index nasfpn's builder gives them.
    """

    def __init__(self, project: int = 0, down: nn.Module | None = None) -> None:
        super().__init__()
        if project:
            self.project = nn.Sequential(*conv_norm(project, CHANNELS, 1))
        if down is not None:
            self.down = down
''',
    "Node": '''
class Node(nn.Module):
    """A node's weights, named as nasfpn's builder names them: {names}."""

    def __init__({args}) -> None:
        super().__init__()
{fusion_code}        self.resample = nn.ModuleList(resample or [])
        if post is not None:
            self.post = post
''',
    "level_sizes": '''
def level_sizes(c3: Tensor, c4: Tensor, c5: Tensor) -> list[list[int]]:
    """Height and width of P3..P7, each level the ceil-half of the one below (as ResNets give)."""
    sizes = [list(c3.shape[-2:])]
    for c in (c4, c5, None, None):
        size = [(s + 1) // 2 for s in sizes[-1]]
        if c is not None and list(c.shape[-2:]) != size:
            raise ValueError("each of C4, C5 must be the ceil-half of the level below, as a ResNet's are")
        sizes.append(size)
    return sizes
''',
}

# Which helpers each helper needs, and the order helpers appear in the file.
_NEEDS = {
    "conv_down": ("conv_norm",),
    "relu_conv_down": ("conv_norm",),
    "conv": ("conv_norm",),
    "relu_conv": ("conv_norm",),
    "swish_sepconv": ("conv_norm",),
    "aspp": ("conv_norm",),
    "Resample": ("conv_norm",),
}
_ORDER = tuple(_HELPERS)

_POST_FACTORY = {
    "conv": "conv()",
    "relu_conv": "relu_conv()",
    "swish_sepconv": "swish_sepconv()",
    "aspp": "ASPP()",
}
_CONV_DOWN_FACTORY = {"conv": "conv_down", "relu_conv": "relu_conv_down"}
_POOL_FUNCTION = {"max": "maxpool", "subsample": "subsample"}
_NORM_LABEL = {"bn": "BatchNorm", "gn": "GroupNorm", "none": "none"}


def _known(vocabulary: Mapping[str, Word], name: str) -> str:
    """``name`` when it is a word of ``vocabulary`` (``nas.genotype``); KeyError otherwise, so no
    text but the vocabulary's own reaches the module."""
    if name not in vocabulary:
        raise KeyError(f"unknown op {name!r}")
    return name


# --- the graph as code ------------------------------------------------------------------------


@dataclass(frozen=True)
class _E:
    """An expression to print: an atom, a call ``text(items)``, a list ``[items]`` or a sum."""

    kind: str  # "atom" | "call" | "list" | "sum"
    text: str = ""
    items: tuple[_E, ...] = ()

    def flat(self) -> str:
        inner = [item.flat() for item in self.items]
        if self.kind == "call":
            return f"{self.text}({', '.join(inner)})"
        if self.kind == "list":
            return f"[{', '.join(inner)}]"
        return " + ".join(inner) if self.kind == "sum" else self.text


def _atom(text: str) -> _E:
    return _E("atom", text)


def _render(e: _E, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
    """Lines of ``prefix + e + suffix`` at ``indent``, broken (black's way) where longer than 110."""
    pad = " " * indent
    line = pad + prefix + e.flat() + suffix
    if len(line) <= 110 or e.kind == "atom":
        return [line]
    if e.kind == "sum":  # inside brackets the caller opened: one term a line
        lines = _render(e.items[0], indent, prefix)
        for item in e.items[1:]:
            lines += _render(item, indent, "+ ")
        lines[-1] += suffix
        return lines
    if e.kind == "call" and len(e.items) == 1 and e.items[0].kind == "list":
        opener, closer, items = f"{e.text}([", "])", e.items[0].items  # hug the list
    elif e.kind == "call":
        opener, closer, items = f"{e.text}(", ")", e.items
    else:
        opener, closer, items = "[", "]", e.items
    lines = [pad + prefix + opener]
    if len(items) == 1 and e.kind == "call" and items[0].kind != "list" or items[0].kind == "sum":
        lines += _render(items[0], indent + 4)
    else:
        for item in items:
            lines += _render(item, indent + 4, "", ",")
    return lines + [pad + closer + suffix]


@dataclass
class _Code:
    """Statements and module constructors of one part of the graph (the extra levels, a cell)."""

    modules: list[tuple[str, _E]]  # (entry index numeral, Node(...)) for nodes that have weights
    statements: list[str]  # lines, indented for a method body
    uses_sizes: bool
    helpers: set[str]


def _graph_code(
    genotype: Genotype,
    entries: list[int],
    widths: dict[int, int],
    names: dict[int, str],
    result_names: dict[int, str],
    channels: int,
) -> _Code:
    """Code for the nodes making pool entries ``entries`` (all of them used)."""
    code = _Code([], [], False, set())
    for index in entries:
        node = genotype.node(index) if index >= NUM_INPUTS else genotype.extra_levels[index - BACKBONE_INPUTS]
        reads = genotype.reads(index) if index >= NUM_INPUTS else node.inputs
        var = f"n{_int(index)}"
        resamples: list[str] = []
        exprs: list[str] = []
        for j in reads:
            step = node.level - genotype.entry_levels[j]
            name, width = names[j], widths[j]
            conv_down = step > 0 and node.down in _CONV_DOWN_FACTORY
            project = width != channels and not conv_down
            if not project and not conv_down and step == 0:
                exprs.append(name)  # same level, same width: read as it is
                continue
            slot = f"{var}.resample[{_int(len(resamples))}]"
            if conv_down:
                factory = _CONV_DOWN_FACTORY[node.down]
                code.helpers.add(factory)
                resamples.append(f"Resample(down={factory}({_int(width, 1)}))")
                exprs.append(f"{slot}.down({name})")
                continue
            resamples.append(f"Resample(project={_int(width, 1)})" if project else "Resample()")
            x = f"{slot}.project({name})" if project else name
            if step < 0:
                code.uses_sizes = True
                code.helpers.add("up")
                x = f"up({x}, s{_int(node.level, 3, 7)})"
            elif step > 0:
                pool = _POOL_FUNCTION[node.down]
                code.helpers.add(pool)
                x = f"{pool}({x}, {_int(2**step, 2, 16)})"
            exprs.append(x)
        while resamples and resamples[-1] == "Resample()":
            resamples.pop()  # weightless slots after the last weighted one need no placeholder
        arity = len(node.inputs)
        inputs, absorbed = [_atom(x) for x in exprs[:arity]], [_atom(x) for x in exprs[arity:]]
        fusion = 0
        if arity == 1:
            out = inputs[0]
        elif node.combine == "attention":
            levels = [genotype.entry_levels[j] for j in reads[:2]]
            coarser_first = levels[0] >= levels[1]  # as the builder: the coarser gates; a tie, the first
            code.helpers.add("attention")
            out = _E("call", "attention", tuple(inputs if coarser_first else inputs[::-1]))
        elif node.combine == "weighted":
            fusion = arity
            out = _E("call", f"{var}.fusion", (_E("list", items=tuple(inputs)),))
        elif node.combine == "sum":
            out = _E("sum", items=tuple(inputs))
        else:
            raise GenotypeError(f"node {index}: no code for combine {node.combine!r}")
        if absorbed:
            out = _E("sum", items=(*(out.items if out.kind == "sum" else (out,)), *absorbed))
        post = _POST_FACTORY.get(node.post) if node.post != "none" else None
        if node.post != "none" and post is None:
            raise GenotypeError(f"node {index}: no code for post op {node.post!r}")
        if post is not None:
            code.helpers.add(node.post)
            out = _E("call", f"{var}.post", (out,))
        elif out.kind == "sum" and len(f"{result_names[index]} = {out.flat()}") > 90:
            out = _E("call", "", (out,))  # brackets to break the sum in
        level = _int(node.level, 3, 7)
        code.statements += _render(out, 8, f"{result_names[index]} = ", f"  # P{level}")
        args = []
        if resamples:
            args.append(_E("list", items=tuple(_atom(r) for r in resamples)))
        if fusion:
            args.append(_atom(f"fusion={_int(fusion, 2)}"))
        if post is not None:
            args.append(_atom(f"post={post}"))
        if args:
            code.modules.append((_int(index), _E("call", "Node", tuple(args))))
    return code


def _module_dict(attribute: str, modules: list[tuple[str, _E]], indent: str) -> list[str]:
    if not modules:
        return [f"{indent}self.{attribute} = nn.ModuleDict()"]
    lines = [f"{indent}self.{attribute} = nn.ModuleDict(", f"{indent}    {{"]
    for key, module in modules:
        lines += _render(module, len(indent) + 8, f'"{key}": ', ",")
    return lines + [f"{indent}    }}", f"{indent})"]


def _unpack(modules: list[tuple[str, _E]], source: str) -> list[str]:
    if not modules:
        return []
    names = ", ".join(f"n{key}" for key, _ in modules)
    target = f"({names},)" if len(modules) == 1 else names
    return [f"        {target} = {source}.values()"]


def _cell_class(
    class_name: str,
    genotype: Genotype,
    widths: dict[int, int],
    params: dict[int, str],
    channels: int,
) -> tuple[str, set[str]]:
    """A cell class; ``params`` names the pool entries 0..4 it takes (those the graph reads)."""
    used = genotype.used_entries()
    entries = [i for i in range(NUM_INPUTS, genotype.num_entries) if i in used]
    result_names = {i: f"x{_int(i)}" for i in entries}
    code = _graph_code(genotype, entries, widths, {**params, **result_names}, result_names, channels)
    signature = ", ".join(f"{name}: Tensor" for name in params.values())
    lines = [
        "",
        "",
        f"class {class_name}(nn.Module):",
        f'    """One repeat of the cell: pool entries {", ".join(params.values())} in, P3..P7 out."""',
        "",
        "    def __init__(self) -> None:",
        "        super().__init__()",
        *_module_dict("nodes", code.modules, "        "),
        "",
        *_def_forward(f"self, {signature}, sizes: list[list[int]]", "Outputs"),
    ]
    if code.uses_sizes:
        lines.append("        s3, s4, s5, s6, s7 = sizes")
    lines += _unpack(code.modules, "self.nodes")
    lines += code.statements
    lines.append(f"        return {', '.join(result_names[i] for i in genotype.outputs)}")
    if code.modules:
        code.helpers.add("Node")
    return "\n".join(lines) + "\n", code.helpers


def _def_forward(args: str, returns: str) -> list[str]:
    line = f"    def forward({args}) -> {returns}:"
    if len(line) <= 110:
        return [line]
    return ["    def forward(", f"        {args}", f"    ) -> {returns}:"]


def _table(genotype: Genotype) -> list[str]:
    """The node table of the docstring: only integers and op labels from fixed tables."""
    used = genotype.used_entries()
    rows = [("entry", "level", "reads", "combine", "down", "up", "post", "output")]
    for k in range(BACKBONE_INPUTS):
        rows.append(
            (_int(k), f"P{_int(LEVELS[k], 3, 7)}", f"C{_int(LEVELS[k], 3, 7)}", "-", "-", "-", "-", "-")
        )
    outputs = {index: f"P{_int(level, 3, 7)}" for level, index in zip(LEVELS, genotype.outputs)}
    nodes = [(BACKBONE_INPUTS + k, node) for k, node in enumerate(genotype.extra_levels)]
    nodes += [(NUM_INPUTS + k, node) for k, node in enumerate(genotype.nodes)]
    for index, node in nodes:
        if index not in used:
            continue
        reads = ", ".join(_int(j) for j in node.inputs)
        if index >= NUM_INPUTS and genotype.absorbed[index - NUM_INPUTS]:
            reads += " +" + ", +".join(_int(j) for j in genotype.absorbed[index - NUM_INPUTS])
        levels = [genotype.entry_levels[j] for j in node.inputs]
        rows.append(
            (
                _int(index),
                f"P{_int(node.level, 3, 7)}",
                reads,
                _known(COMBINES, node.combine) if len(node.inputs) > 1 else "-",
                _known(DOWNSAMPLES, node.down) if any(level < node.level for level in levels) else "-",
                _known(UPSAMPLES, node.up) if any(level > node.level for level in levels) else "-",
                _known(POSTS, node.post) if node.post != "none" else "-",
                outputs.get(index, "-"),
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["    " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


_RESNETS = {(128, 256, 512): "resnet18", (512, 1024, 2048): "resnet50"}


def _usage(build: BuildSettings, facts: Facts) -> list[str]:
    size = _int(facts.image_size, 1, 1 << 14)
    resnet = _RESNETS.get(build.in_channels)
    widths = [_int(w, 1) for w in build.in_channels]
    lines = ["    import torch"]
    if resnet:
        lines += [
            "    import torchvision",
            "    from torchvision.models._utils import IntermediateLayerGetter",
        ]
    lines += [
        "    from torchvision.models.detection import RetinaNet",
        "",
        "    from neck import Neck",
        "",
        "",
        "    class BackboneWithNeck(torch.nn.Module):",
        "        def __init__(self, body, neck):",
        "            super().__init__()",
        "            self.body, self.neck = body, neck",
        "            self.out_channels = neck.out_channels  # what RetinaNet's head reads",
        "",
        "        def forward(self, images):",
        "            return self.neck(self.body(images))  # C3..C5 -> OrderedDict P3..P7",
        "",
        "",
    ]
    if resnet:
        lines += [
            f"    resnet = torchvision.models.{resnet}()  # C3..C5 widths {', '.join(widths)}",
            '    body = IntermediateLayerGetter(resnet, {"layer2": "C3", "layer3": "C4", "layer4": "C5"})',
        ]
    else:
        c3, c4, c5 = (_int(w, 1) for w in build.in_channels)
        lines += [
            f"    # No torchvision ResNet has C3..C5 widths {c3}, {c4}, {c5}: a stand-in body with them.",
            "    class Body(torch.nn.Module):",
            "        def __init__(self):",
            "            super().__init__()",
            f"            self.c3 = torch.nn.Conv2d(3, {c3}, 8, stride=8)",
            f"            self.c4 = torch.nn.Conv2d({c3}, {c4}, 3, stride=2, padding=1)",
            f"            self.c5 = torch.nn.Conv2d({c4}, {c5}, 3, stride=2, padding=1)",
            "",
            "        def forward(self, images):",
            "            c3 = self.c3(images)",
            "            c4 = self.c4(c3)",
            "            return [c3, c4, self.c5(c4)]",
            "",
            "",
            "    body = Body()",
        ]
    lines.append("    neck = Neck()")
    if facts.has_weights:
        lines.append(
            '    neck.load_state_dict(torch.load("weights.pt", weights_only=True))  # the trained neck'
        )
    else:
        lines.append(
            '    # neck.load_state_dict(torch.load("weights.pt", weights_only=True))  # once trained'
        )
    lines += [
        "    backbone = BackboneWithNeck(body, neck)",
        f"    model = RetinaNet(backbone, num_classes=91, min_size={size}, max_size={size})",
        "    model.eval()",
        "    with torch.no_grad():",
        f"        detections = model([torch.rand(3, {size}, {size})])  # per image: boxes, scores, labels",
    ]
    return lines


def _docstring(genotype: Genotype, build: BuildSettings, facts: Facts) -> list[str]:
    name = safe_label(genotype.name)
    label = safe_label(facts.label)
    if facts.origin == "run":
        trial = _int(facts.trial, 0, 1 << 40) if facts.trial is not None else "?"
        origin = f"trial {trial} of the search run {label or '(name withheld: not a plain label)'}"
        ap = facts.ap
        if isinstance(ap, int | float) and not isinstance(ap, bool) and math.isfinite(ap):
            origin += f" (proxy AP {float(ap) * 100:.1f})"
    elif facts.origin == "neck":
        origin = f"the fixed neck {label or '(name withheld)'}"
    else:
        origin = f"the genotype file {label or '(name withheld: not a plain label)'}"
    if genotype.name == "":
        title = "The genotype has no name."
    elif name is not None:
        title = f"The genotype is {name}."
    else:
        title = "The genotype's name is withheld: it is not a plain label (see genotype.json)."
    c3, c4, c5 = (_int(w, 1) for w in build.in_channels)
    size = _int(facts.image_size, 1, 1 << 14)
    sides = [_int(math.ceil(facts.image_size / 2**level), 1) for level in (3, 4, 5)]
    used_nodes = sum(1 for i in genotype.used_entries() if i >= NUM_INPUTS)
    lines = [
        f"A feature-pyramid neck, exported by nasfpn from {origin}.",
        "",
        title,
        "``Neck`` takes a backbone's C3, C4, C5 (a list, or a dict in that order) and returns an",
        f"OrderedDict P3..P7 of CHANNELS = {_int(build.channels, 1)} channels each, level l at stride 2**l.",
        "",
        f"Build: C3..C5 widths {c3}, {c4}, {c5}; {_int(build.channels, 1)} channels; "
        f"{_int(build.repeats, 1, MAX_REPEATS)} repeat(s) of the cell; norm {_NORM_LABEL[build.norm_name]}.",
        f"Size: {int(_int(facts.params, 0, 1 << 50)):,} parameters; {facts.flops / 1e9:.3f} GFLOPs "
        f"for a {size}x{size} image (C3..C5 at {sides[0]}x{sides[0]}, {sides[1]}x{sides[1]},",
        f"{sides[2]}x{sides[2]}; a multiply-add counts as 2).",
        "",
        f"The graph ({used_nodes} nodes reach an output; genotype.json beside this file holds it as JSON):",
        "entries 0..2 are C3..C5, 3 and 4 are P6 and P7 made by the extra levels (when there are any),",
        "each node adds one entry; ``+k`` reads entry k as NAS-FPN's rule for unconsumed same-level",
        "entries says. In repeats after the first, entries 0..4 are the previous repeat's P3..P7.",
        "",
        *_table(genotype),
        "",
        *(
            ["Weights: weights.pt beside this file, a state_dict (``torch.load(..., weights_only=True)``)."]
            if facts.has_weights
            else ["Weights: none were exported with this file (no trained checkpoint)."]
        ),
        "The parameter names are those of nasfpn's builder (``nas.nets.builder.GenotypeNeck``): either",
        "module loads the other's state_dict as it is.",
        "",
        "Usage, in torchvision's RetinaNet (run it in this folder)::",
        "",
        *_usage(build, facts),
        "",
        "How this file was made: nasfpn generated it only from validated fields of the genotype --",
        "integers (levels, entry indices, widths) checked to be integers and written as numerals, and",
        "op names looked up in fixed tables of code. No text from the genotype file is copied into",
        "code; a name appears in this docstring only when it is a plain label (letters, digits,",
        "_ . + -). Before writing the file nasfpn parsed it and checked that every import, name,",
        "attribute and string constant comes from its fixed lists.",
    ]
    return lines


def generate(genotype: Genotype, build: BuildSettings, facts: Facts) -> str:
    """The source of ``neck.py`` for ``genotype`` built with ``build``.

    Raises GenotypeError for an invalid genotype (validated again here), ValueError for bad
    build settings or facts; the result has passed ``check_source``.
    """
    if not isinstance(genotype, Genotype) or not isinstance(build, BuildSettings):
        raise TypeError("generate takes a Genotype and BuildSettings")
    genotype = Genotype.from_dict(genotype.to_dict())
    _int(facts.params, 0, 1 << 50)
    _int(facts.flops, 0, 1 << 62)
    _int(facts.image_size, 1, 1 << 14)
    channels, repeats = build.channels, build.repeats
    used = genotype.used_entries()

    # Pool entries 0..4: C3..C5 and the extra levels' P6, P7 in the first repeat, the previous
    # repeat's P3..P7 after it. A cell takes those its graph reads.
    read = [i for i in range(NUM_INPUTS) if i in used and (i < BACKBONE_INPUTS or genotype.extra_levels)]
    first_names = {i: ("c3", "c4", "c5", "p6", "p7")[i] for i in read}
    later_names = {i: f"p{LEVELS[i]}" for i in read}
    node_widths = {i: channels for i in range(NUM_INPUTS, genotype.num_entries)}
    first_widths = dict(enumerate(build.in_channels)) | {3: channels, 4: channels} | node_widths
    later_widths = {i: channels for i in range(NUM_INPUTS)} | node_widths

    extra = _graph_code(
        genotype,
        [i for i in range(BACKBONE_INPUTS, NUM_INPUTS) if i in used and genotype.extra_levels],
        first_widths,
        {0: "c3", 1: "c4", 2: "c5", 3: "p6", 4: "p7"},
        {3: "p6", 4: "p7"},
        channels,
    )
    first_text, helpers = _cell_class("Cell", genotype, first_widths, later_names, channels)
    later_text, later_helpers = _cell_class("Cell", genotype, later_widths, later_names, channels)
    if repeats == 1 or first_text == later_text:
        classes = [first_text]
        cells = "nn.ModuleList([Cell() for _ in range(REPEATS)])"
        first_args = ", ".join(first_names.values())
    else:
        first_text, helpers = _cell_class("FirstCell", genotype, first_widths, first_names, channels)
        classes = [first_text, later_text]
        cells = "nn.ModuleList([FirstCell()] + [Cell() for _ in range(REPEATS - 1)])"
        helpers |= later_helpers
        first_args = ", ".join(first_names.values())
    helpers |= extra.helpers | {"level_sizes"}
    if extra.modules:
        helpers.add("Node")
    if any(n.combine == "weighted" and len(n.inputs) > 1 for n in genotype.nodes):
        helpers.add("Fusion")
    if "[Resample(" in "".join(classes) + "".join(m.flat() for _, m in extra.modules):
        helpers.add("Resample")
    helpers = _closure(helpers)

    neck = [
        "",
        "",
        "class Neck(nn.Module):",
        '    """C3..C5 (a list, or a dict in C3, C4, C5 order) -> OrderedDict P3..P7 of CHANNELS each."""',
        "",
        "    def __init__(self) -> None:",
        "        super().__init__()",
        "        self.in_channels = list(IN_CHANNELS)",
        "        self.out_channels = CHANNELS",
        *_module_dict("extra_levels", extra.modules, "        "),
        f"        self.cells = {cells}",
        "",
        "    def forward(self, features: dict[str, Tensor] | list[Tensor]) -> OrderedDict[str, Tensor]:",
        "        c3, c4, c5 = features.values() if isinstance(features, dict) else features",
        "        sizes = level_sizes(c3, c4, c5)",
        *_unpack(extra.modules, "self.extra_levels"),
        *extra.statements,
        f"        p3, p4, p5, p6, p7 = self.cells[0]({first_args}, sizes)",
    ]
    if repeats > 1:
        neck += [
            "        for cell in self.cells[1:]:",
            f"            p3, p4, p5, p6, p7 = cell({', '.join(later_names.values())}, sizes)",
        ]
    neck.append('        return OrderedDict([("P3", p3), ("P4", p4), ("P5", p5), ("P6", p6), ("P7", p7)])')

    imports = ["from __future__ import annotations", "", "from collections import OrderedDict", ""]
    if helpers & {"attention", "Fusion", "aspp"}:
        imports.append("import torch")
    if helpers & {"up", "maxpool", "subsample", "Fusion"}:
        imports.append("import torch.nn.functional as F")
    imports.append("from torch import Tensor, nn")
    constants = [
        "",
        f"IN_CHANNELS = ({', '.join(_int(w, 1) for w in build.in_channels)})  # widths of C3, C4, C5",
        f"CHANNELS = {_int(channels, 1)}  # width of every node and output",
        f"REPEATS = {_int(repeats, 1, MAX_REPEATS)}  # the cell is stacked this many times",
        "Outputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # P3..P7",
    ]
    parts = ['"""' + "\n".join(_docstring(genotype, build, facts)) + '\n"""', "", *imports, *constants]
    body = "\n".join(parts) + "\n"
    for helper in _ORDER:
        if helper in helpers:
            body += "\n" + _helper_text(helper, build, helpers)
    body += "".join(classes)
    body += "\n".join(neck) + "\n"
    check_source(body)
    return body


def _helper_text(helper: str, build: BuildSettings, helpers: set[str]) -> str:
    text = _HELPERS[helper]
    if helper == "conv_norm":
        doc, code = _CONV_NORM[build.norm_name]
        if "aspp" in helpers:  # ASPP's atrous convs: dilated, padded to keep the size
            signature = ", dilation: int = 1"
            padding = "    padding = dilation * (k // 2)\n"
            body = padding + "    return " + code.replace("{padding}", "padding, dilation")
        else:
            signature, body = "", "    return " + code.replace("{padding}", "k // 2")
        return text.replace("{dilation}", signature).replace("{doc}", doc).replace("{code}", body)
    fusion = "Fusion" in helpers
    if helper == "Node":
        names = "``fusion``, ``resample``, ``post``" if fusion else "``resample``, ``post``"
        fusion_arg = "fusion: int = 0, " if fusion else ""
        args = f"self, resample: list[nn.Module] | None = None, {fusion_arg}post: nn.Module | None = None"
        if len(args) > 80:
            args = f"\n        {args}\n    "
        fusion_code = "        if fusion:\n            self.fusion = Fusion(fusion)\n" if fusion else ""
        return text.replace("{names}", names).replace("{args}", args).replace("{fusion_code}", fusion_code)
    return text


def _closure(helpers: set[str]) -> set[str]:
    result, stack = set(), list(helpers)
    while stack:
        h = stack.pop()
        if h not in result:
            result.add(h)
            stack.extend(_NEEDS.get(h, ()))
    return result


# --- the second line of defence -----------------------------------------------------------------

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
