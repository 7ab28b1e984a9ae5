"""The Alembic revisions' docstrings say what their code does (a reader trusts the header)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rotator.store

VERSIONS = Path(rotator.store.__file__).parent / "migrations" / "versions"
FILES = sorted(VERSIONS.glob("[0-9]*.py"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_each_revision_header_names_its_revision_and_down_revision(path: Path) -> None:
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree) or ""
    assigned = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    header = dict(
        line.split(":", 1)
        for line in doc.splitlines()
        if line.startswith(("Revision ID:", "Revises:"))
    )
    assert header["Revision ID"].strip() == assigned["revision"]
    assert header["Revises"].strip() == (assigned["down_revision"] or "")
    assert "renumber" not in doc, "a merged revision keeps no note about renumbering"
