"""setup.cfg lists every package folder, so `pip install .` (not only an editable install) has them all."""
from __future__ import annotations

import configparser
import pathlib
import subprocess
import sys

import pytest

from jobbie.actors.config import ACTORS

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


@pytest.mark.parametrize("module", [f"jobbie.actors.{name}.actor" for name in ACTORS]
                         + ["jobbie.cli.main", "jobbie.transport.ops_search", "jobbie.transport.ops_budgets"])
def test_every_entry_point_imports_on_its_own(module):
    # Each actor process imports its own module first: the op registry must not depend on
    # which module came first (it once did, through the order jobbie/__init__ imported them in).
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_package_imports_its_client_and_worker_only_when_asked():
    code = ("import sys, jobbie.actors.raft.actor; assert 'jobbie.transport.worker' not in sys.modules; "
            "from jobbie import Worker, Client, __version__; assert Worker.__name__ == 'Worker'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
