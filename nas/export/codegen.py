"""The code generator: a genotype and its build settings -> the source of a standalone neck module.

The generated ``neck.py`` imports only torch. Its ``Neck`` computes what ``nas.nets.builder``'s
``GenotypeNeck`` computes, op for op and in the same order (so outputs are equal, not just
close), and registers its weights under the builder's names, so either module loads the
other's ``state_dict``. Its ``forward`` methods hold one statement per node.

Safety (``nas.export.safety``): the source is made only from

- integers of the genotype (levels, entry indices) and of the build (widths, repeats), each
  checked to be an ``int`` (not a bool) and written as a numeral;
- op names, each looked up in a fixed table of code (``nas.export.templates``; a name the table
  lacks is an error);
- fixed text of these modules.

No string from a genotype file reaches the code. The genotype is validated again here
(``Genotype.from_dict(genotype.to_dict())``), so an object put together in Python without the
file parser's type checks is held to the same rules. Labels (the genotype's, a run's or a
neck's name) appear only in the module docstring, and only when they are plain labels
(``SAFE_LABEL``); otherwise the docstring says the name is withheld. As a second line of
defence ``check_source`` parses the finished source and refuses it unless every import, name,
attribute and string constant comes from fixed lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from nas.export.render import Expr, atom, render
from nas.export.safety import MAX_WIDTH, check_source, numeral, safe_label
from nas.export.templates import (
    CONV_DOWN_FACTORY,
    HELPER_ORDER,
    NORM_LABEL,
    NORM_NAMES,
    POOL_FUNCTION,
    POST_FACTORY,
    helper_text,
    with_needs,
)
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

MAX_REPEATS = 64


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
            numeral(width, 1, MAX_WIDTH)
        numeral(self.repeats, 1, MAX_REPEATS)
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


def _known(vocabulary: Mapping[str, Word], name: str) -> str:
    """``name`` when it is a word of ``vocabulary`` (``nas.genotype``); KeyError otherwise, so no
    text but the vocabulary's own reaches the module."""
    if name not in vocabulary:
        raise KeyError(f"unknown op {name!r}")
    return name


@dataclass
class _Code:
    """Statements and module constructors of one part of the graph (the extra levels, a cell)."""

    modules: list[tuple[str, Expr]]  # (entry index numeral, Node(...)) for nodes that have weights
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
        var = f"n{numeral(index)}"
        resamples: list[str] = []
        exprs: list[str] = []
        for j in reads:
            step = node.level - genotype.entry_levels[j]
            name, width = names[j], widths[j]
            conv_down = step > 0 and node.down in CONV_DOWN_FACTORY
            project = width != channels and not conv_down
            if not project and not conv_down and step == 0:
                exprs.append(name)  # same level, same width: read as it is
                continue
            slot = f"{var}.resample[{numeral(len(resamples))}]"
            if conv_down:
                factory = CONV_DOWN_FACTORY[node.down]
                code.helpers.add(factory)
                resamples.append(f"Resample(down={factory}({numeral(width, 1)}))")
                exprs.append(f"{slot}.down({name})")
                continue
            resamples.append(f"Resample(project={numeral(width, 1)})" if project else "Resample()")
            x = f"{slot}.project({name})" if project else name
            if step < 0:
                code.uses_sizes = True
                code.helpers.add("up")
                x = f"up({x}, s{numeral(node.level, 3, 7)})"
            elif step > 0:
                pool = POOL_FUNCTION[node.down]
                code.helpers.add(pool)
                x = f"{pool}({x}, {numeral(2**step, 2, 16)})"
            exprs.append(x)
        while resamples and resamples[-1] == "Resample()":
            resamples.pop()  # weightless slots after the last weighted one need no placeholder
        arity = len(node.inputs)
        inputs, absorbed = [atom(x) for x in exprs[:arity]], [atom(x) for x in exprs[arity:]]
        fusion = 0
        if arity == 1:
            out = inputs[0]
        elif node.combine == "attention":
            levels = [genotype.entry_levels[j] for j in reads[:2]]
            coarser_first = levels[0] >= levels[1]  # as the builder: the coarser gates; a tie, the first
            code.helpers.add("attention")
            out = Expr("call", "attention", tuple(inputs if coarser_first else inputs[::-1]))
        elif node.combine == "weighted":
            fusion = arity
            out = Expr("call", f"{var}.fusion", (Expr("list", items=tuple(inputs)),))
        elif node.combine == "sum":
            out = Expr("sum", items=tuple(inputs))
        else:
            raise GenotypeError(f"node {index}: no code for combine {node.combine!r}")
        if absorbed:
            out = Expr("sum", items=(*(out.items if out.kind == "sum" else (out,)), *absorbed))
        post = POST_FACTORY.get(node.post) if node.post != "none" else None
        if node.post != "none" and post is None:
            raise GenotypeError(f"node {index}: no code for post op {node.post!r}")
        if post is not None:
            code.helpers.add(node.post)
            out = Expr("call", f"{var}.post", (out,))
        elif out.kind == "sum" and len(f"{result_names[index]} = {out.flat()}") > 90:
            out = Expr("call", "", (out,))  # brackets to break the sum in
        level = numeral(node.level, 3, 7)
        code.statements += render(out, 8, f"{result_names[index]} = ", f"  # P{level}")
        args = []
        if resamples:
            args.append(Expr("list", items=tuple(atom(r) for r in resamples)))
        if fusion:
            args.append(atom(f"fusion={numeral(fusion, 2)}"))
        if post is not None:
            args.append(atom(f"post={post}"))
        if args:
            code.modules.append((numeral(index), Expr("call", "Node", tuple(args))))
    return code


def _module_dict(attribute: str, modules: list[tuple[str, Expr]], indent: str) -> list[str]:
    if not modules:
        return [f"{indent}self.{attribute} = nn.ModuleDict()"]
    lines = [f"{indent}self.{attribute} = nn.ModuleDict(", f"{indent}    {{"]
    for key, module in modules:
        lines += render(module, len(indent) + 8, f'"{key}": ', ",")
    return lines + [f"{indent}    }}", f"{indent})"]


def _unpack(modules: list[tuple[str, Expr]], source: str) -> list[str]:
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
    result_names = {i: f"x{numeral(i)}" for i in entries}
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
            (
                numeral(k),
                f"P{numeral(LEVELS[k], 3, 7)}",
                f"C{numeral(LEVELS[k], 3, 7)}",
                "-",
                "-",
                "-",
                "-",
                "-",
            )
        )
    outputs = {index: f"P{numeral(level, 3, 7)}" for level, index in zip(LEVELS, genotype.outputs)}
    nodes = [(BACKBONE_INPUTS + k, node) for k, node in enumerate(genotype.extra_levels)]
    nodes += [(NUM_INPUTS + k, node) for k, node in enumerate(genotype.nodes)]
    for index, node in nodes:
        if index not in used:
            continue
        reads = ", ".join(numeral(j) for j in node.inputs)
        if index >= NUM_INPUTS and genotype.absorbed[index - NUM_INPUTS]:
            reads += " +" + ", +".join(numeral(j) for j in genotype.absorbed[index - NUM_INPUTS])
        levels = [genotype.entry_levels[j] for j in node.inputs]
        rows.append(
            (
                numeral(index),
                f"P{numeral(node.level, 3, 7)}",
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
    size = numeral(facts.image_size, 1, 1 << 14)
    resnet = _RESNETS.get(build.in_channels)
    widths = [numeral(w, 1) for w in build.in_channels]
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
        c3, c4, c5 = (numeral(w, 1) for w in build.in_channels)
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
        trial = numeral(facts.trial, 0, 1 << 40) if facts.trial is not None else "?"
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
    c3, c4, c5 = (numeral(w, 1) for w in build.in_channels)
    channels, repeats = numeral(build.channels, 1), numeral(build.repeats, 1, MAX_REPEATS)
    size = numeral(facts.image_size, 1, 1 << 14)
    sides = [numeral(math.ceil(facts.image_size / 2**level), 1) for level in (3, 4, 5)]
    used_nodes = sum(1 for i in genotype.used_entries() if i >= NUM_INPUTS)
    lines = [
        f"A feature-pyramid neck, exported by nasfpn from {origin}.",
        "",
        title,
        "``Neck`` takes a backbone's C3, C4, C5 (a list, or a dict in that order) and returns an",
        f"OrderedDict P3..P7 of CHANNELS = {channels} channels each, level l at stride 2**l.",
        "",
        f"Build: C3..C5 widths {c3}, {c4}, {c5}; {channels} channels; "
        f"{repeats} repeat(s) of the cell; norm {NORM_LABEL[build.norm_name]}.",
        f"Size: {int(numeral(facts.params, 0, 1 << 50)):,} parameters; {facts.flops / 1e9:.3f} GFLOPs "
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
    numeral(facts.params, 0, 1 << 50)
    numeral(facts.flops, 0, 1 << 62)
    numeral(facts.image_size, 1, 1 << 14)
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
    helpers = with_needs(helpers)

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
        f"IN_CHANNELS = ({', '.join(numeral(w, 1) for w in build.in_channels)})  # widths of C3, C4, C5",
        f"CHANNELS = {numeral(channels, 1)}  # width of every node and output",
        f"REPEATS = {numeral(repeats, 1, MAX_REPEATS)}  # the cell is stacked this many times",
        "Outputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # P3..P7",
    ]
    parts = ['"""' + "\n".join(_docstring(genotype, build, facts)) + '\n"""', "", *imports, *constants]
    body = "\n".join(parts) + "\n"
    for helper in HELPER_ORDER:
        if helper in helpers:
            body += "\n" + helper_text(helper, build.norm_name, helpers)
    body += "".join(classes)
    body += "\n".join(neck) + "\n"
    check_source(body)
    return body
