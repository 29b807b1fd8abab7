"""A griffe extension for the API reference: the docstrings' reStructuredText bits, as Markdown.

The docstrings use Sphinx roles (``:class:`Call```, ``:func:`~resilient.masking.install```)
and ``::`` before literal blocks; mkdocstrings renders Markdown. Roles become
inline code (the name only, as Sphinx shows it with ``~``) and ``text::``
becomes ``text:`` (the indented block after it is already a Markdown code
block). Loaded by mkdocs.yml (``extensions:``), for the site only.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(?m)^([ \t]*)::[ \t]*$|(?<=\S)::[ \t]*$")


def _role(match: re.Match[str]) -> str:
    short, name = match.groups()
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


def _markdown(text: str) -> str:
    text = _ROLE.sub(_role, text)
    return _LITERAL.sub(lambda m: "" if m.group(1) is not None else ":", text)


class RstToMarkdown(griffe.Extension):
    """Rewrites each object's docstring once, when it is loaded."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _markdown(obj.docstring.value)
