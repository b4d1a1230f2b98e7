"""The Python examples of docs/python.md and docs/coming-from-celery-rq.md compile, import only names
`jobbie` has, and call only Client / App methods that exist with the keywords they use."""
from __future__ import annotations

import ast
import inspect
import pathlib
import re

import pytest

import jobbie

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
PAGES = ("python.md", "coming-from-celery-rq.md")


def blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_examples_compile_and_import_what_jobbie_has(page):
    found = blocks(page)
    assert found, f"{page} has no python examples"
    for code in found:
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "jobbie":
                missing = [a.name for a in node.names if not hasattr(jobbie, a.name)]
                assert not missing, f"{page} imports {missing} from jobbie"


@pytest.mark.parametrize("page", PAGES)
def test_client_calls_in_examples_match_the_signatures(page):
    methods = {n: inspect.signature(getattr(jobbie.Client, n)) for n in dir(jobbie.Client) if not n.startswith("_")}
    for code in blocks(page):
        for node in ast.walk(ast.parse(code)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "client"):
                continue
            sig = methods.get(node.func.attr)
            assert sig is not None, f"{page}: Client has no method {node.func.attr}"
            sig.bind(None, *[None] * len(node.args), **{k.arg: None for k in node.keywords if k.arg})
