"""Expressions of the generated code, printed as black would print them: broken at 110 columns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Expr:
    """An expression to print: an atom, a call ``text(items)``, a list ``[items]`` or a sum."""

    kind: str  # "atom" | "call" | "list" | "sum"
    text: str = ""
    items: tuple[Expr, ...] = ()

    def flat(self) -> str:
        inner = [item.flat() for item in self.items]
        if self.kind == "call":
            return f"{self.text}({', '.join(inner)})"
        if self.kind == "list":
            return f"[{', '.join(inner)}]"
        return " + ".join(inner) if self.kind == "sum" else self.text


def atom(text: str) -> Expr:
    """A name or a literal, printed as it is."""
    return Expr("atom", text)


def render(e: Expr, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
    """Lines of ``prefix + e + suffix`` at ``indent``, broken (black's way) where longer than 110."""
    pad = " " * indent
    line = pad + prefix + e.flat() + suffix
    if len(line) <= 110 or e.kind == "atom":
        return [line]
    if e.kind == "sum":  # inside brackets the caller opened: one term a line
        lines = render(e.items[0], indent, prefix)
        for item in e.items[1:]:
            lines += render(item, indent, "+ ")
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
        lines += render(items[0], indent + 4)
    else:
        for item in items:
            lines += render(item, indent + 4, "", ",")
    return lines + [pad + closer + suffix]
