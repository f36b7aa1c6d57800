"""The fixed code of a generated ``neck.py``: each op name maps to the text that implements it.

A helper (a function or class of the generated file) is a template; ``helper_text`` fills its
few holes -- the norm, ASPP's dilation, BiFPN's fusion -- with more fixed text. Nothing here
reads a genotype: ``nas.export.codegen`` picks helpers by the genotype's op names.
"""

from __future__ import annotations

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
HELPER_ORDER = tuple(_HELPERS)

POST_FACTORY = {
    "conv": "conv()",
    "relu_conv": "relu_conv()",
    "swish_sepconv": "swish_sepconv()",
    "aspp": "ASPP()",
}
CONV_DOWN_FACTORY = {"conv": "conv_down", "relu_conv": "relu_conv_down"}
POOL_FUNCTION = {"max": "maxpool", "subsample": "subsample"}
NORM_LABEL = {"bn": "BatchNorm", "gn": "GroupNorm", "none": "none"}
NORM_NAMES = tuple(_CONV_NORM)


def helper_text(helper: str, norm: str, helpers: set[str]) -> str:
    """The text of ``helper`` for a neck with norm ``norm`` ("bn", "gn", "none") whose file holds
    ``helpers``: conv_norm takes a dilation only beside ASPP, Node a fusion only beside Fusion."""
    text = _HELPERS[helper]
    if helper == "conv_norm":
        doc, code = _CONV_NORM[norm]
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


def with_needs(helpers: set[str]) -> set[str]:
    """``helpers`` and every helper they need, transitively."""
    result, stack = set(), list(helpers)
    while stack:
        h = stack.pop()
        if h not in result:
            result.add(h)
            stack.extend(_NEEDS.get(h, ()))
    return result
