"""Sphinx configuration of the qcompute documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
Built-in extensions and sphinx-click (the CLI reference); no network (no intersphinx).
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from qcompute._version import __version__  # noqa: E402

project = "qcompute"
author = "the qcompute authors"
copyright = "the qcompute authors"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",
]

exclude_patterns = ["_build"]
templates_path: list[str] = []
html_static_path = ["_static"]  # batch.schema.json, published for editors
html_theme = "alabaster"
html_theme_options = {
    "description": "A Python SDK and a self-hostable compute cluster in the Qarnot dialect",
    "fixed_sidebar": True,
}

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}


# -- Declared fields ----------------------------------------------------------------------------
# A resource class (Task) declares its attributes as qcompute._fields.Field descriptors. Autodoc
# would show each one with the Field class's own docstring; instead, each class gets one table
# of its fields, generated from the declarations (so it cannot drift from the code).


def _field_kind(field) -> str:
    if field.volatile:
        return "read-only, volatile (refreshed when stale)"
    if field.read_only:
        return "read-only"
    if field.fixed_after_submit:
        return "writable until submitted"
    return "writable"


def _field_table(cls) -> list[str]:
    from qcompute._fields import Field, parse_datetime

    fields = {name: value for name, value in cls._declared.items() if isinstance(value, Field)}
    if not fields:
        return []
    annotations: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        annotations.update(getattr(klass, "__annotations__", {}))
    lines = ["", ".. list-table:: Fields", "   :header-rows: 1", "   :widths: 18 18 17 17 30", "",
             "   * - Attribute", "     - Wire key", "     - Type", "     - Kind",
             "     - Holds"]
    for name, field in fields.items():
        kind = str(annotations.get(name, ""))
        if not kind and field.parse is parse_datetime:
            kind = "Optional[datetime]"
        if kind.startswith("Field[") and kind.endswith("]"):
            kind = kind[len("Field["):-1]
        lines += [f"   * - ``{name}``", f"     - ``{field.wire_name}``",
                  f"     - ``{kind}``" if kind else "     -", f"     - {_field_kind(field)}",
                  f"     - {field.doc}" if field.doc else "     -"]
    return lines + [""]


def _slot_docs() -> dict[str, list[str]]:
    """The ``Attributes:`` entries of Resource's docstring, for its slots (``auto_update`` ...)."""
    import inspect

    from qcompute._resource import Resource

    docs: dict[str, list[str]] = {}
    current = None
    body = inspect.cleandoc(Resource.__doc__ or "").split("Attributes:", 1)[-1]
    for line in body.splitlines():
        head, sep, rest = line.strip().partition(": ")
        if line.startswith("    ") and not line.startswith("        ") and sep:
            current = docs.setdefault(head, [rest])
        elif current is not None and line.strip():
            current.append(line.strip())
    return docs


def _process_docstring(app, what, name, obj, options, lines) -> None:
    from qcompute._fields import FieldHolder

    if what == "class" and isinstance(obj, type) and issubclass(obj, FieldHolder):
        lines.extend(_field_table(obj))
    elif what == "attribute" and not lines:
        short = name.rsplit(".", 1)[-1]
        lines.extend(_slot_docs().get(short, []))


def _skip_member(app, what, name, obj, skip, options):
    from qcompute._fields import Field

    if isinstance(obj, Field):
        return True  # listed in the class's field table instead
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("autodoc-skip-member", _skip_member)
