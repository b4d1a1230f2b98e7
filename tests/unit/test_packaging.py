"""setup.cfg lists every package folder, so `pip install .` (not only an editable install) has them all."""
from __future__ import annotations

import configparser
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_code_folder_is_a_listed_package():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines())
    mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    wanted = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            wanted.add(".".join([package, *rel.parts]) if rel.parts else package)
    wanted = {w for w in wanted if not any(p in ("tests", "__pycache__") for p in w.split("."))}
    assert wanted - listed == set(), "add these to setup.cfg [options] packages"
