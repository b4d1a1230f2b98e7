"""docs/protocol.md and docs/states.md hold what docs/generate.py makes from the registries."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

from jobbie.transport import ops as opsdef

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def generate():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_sections_are_current(generate, capsys):
    # When the generator checks the docs against the registries / Then nothing is stale
    assert generate.main(["--check"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(n for n, op in opsdef.OPS.items() if op.ok))
def test_every_ok_field_is_described(generate, name):
    blank = [f for f in opsdef.OPS[name].ok if not generate.ok_field_doc(name, f)]
    assert not blank, f"describe these ok fields of {name} in docs/generate.py OK_FIELD_DOCS: {blank}"
