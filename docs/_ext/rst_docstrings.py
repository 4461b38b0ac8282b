"""A griffe extension for the API pages: the docstrings' reStructuredText bits, as Markdown.

The docstrings are Google style with a little reST, readable in a terminal (``help()``) and
in the source. For the site this turns ``.. math::`` blocks into ``$$ ... $$``,
:math:`x` into ``$x$``, ``double backticks`` and :func:`name` into `code`, ``text::`` literal blocks into code blocks and doctest examples into
Python code blocks. The source files stay as they are.
"""

from __future__ import annotations

import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:func|mod|class|meth|obj|data|attr):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _inline(line: str) -> str:
    line = _MATH_ROLE.sub(lambda m: "$" + m.group(1) + "$", line)
    line = _ROLE.sub(lambda m: f"`{m.group(1)}`", line)
    return _LITERAL.sub(lambda m: "`" + m.group(1) + "`", line)


def rst_to_markdown(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        base = _indent(line)
        if stripped == ".. math::" or stripped.endswith("::") and not stripped.startswith(">>>"):
            is_math = stripped == ".. math::"
            j = i + 1
            block = []
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            body = textwrap.dedent("\n".join(block)).strip("\n")
            pad = " " * base
            if is_math:
                out += ["", pad + "$$", *[pad + b for b in body.splitlines()], pad + "$$", ""]
            else:
                out.append(_inline(line.rstrip()[:-1]))  # "so::" -> "so:"
                out += ["", pad + "```text", *[pad + b for b in body.splitlines()], pad + "```", ""]
            i = j
            continue
        if stripped.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][base:] if _indent(lines[i]) >= base else lines[i].strip())
                i += 1
            pad = " " * base
            out += [pad + "```pycon", *[pad + b for b in block], pad + "```"]
            continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
