"""deploy/jobbie.service and deploy/Dockerfile: they parse, and they say what the docs promise."""
from __future__ import annotations

import configparser
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "jobbie.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def unit() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    cfg.optionxform = str  # systemd keys are case-sensitive
    cfg.read_string(UNIT.read_text())
    return cfg


def test_the_unit_runs_the_server_as_a_dedicated_user_with_its_data_under_var_lib():
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[1:3] == ["server", "--data-dir"] and argv[3].startswith("/var/lib/jobbie/")
    assert service["User"] == "jobbie" and service["StateDirectory"] == "jobbie"
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 30
    assert service["RestartPreventExitStatus"] == "2"
    for option in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert option in service, option
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The jobbie executable of the unit is not installed here: point ExecStart at this Python.
    text = UNIT.read_text().replace("/opt/jobbie/bin/jobbie server", f"{sys.executable} -m jobbie.cli.main server")
    copy = tmp_path / "jobbie.service"
    copy.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [line for line in proc.stderr.splitlines() if "jobbie.service" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word, rest))
            pending = ""
    assert not pending, "a continued line at the end"
    return out


def test_the_dockerfile_builds_from_python_311_slim_and_runs_as_a_non_root_user():
    steps = dockerfile()
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "VOLUME", "EXPOSE", "STOPSIGNAL", "CMD"}
    assert {word for word, _ in steps} <= known
    assert steps[0] == ("FROM", "python:3.11-slim")
    words = [w for w, _ in steps]
    runs = " ".join(rest for w, rest in steps if w == "RUN")
    assert "pip install ." in runs and "useradd" in runs
    user = [rest for w, rest in steps if w == "USER"]
    assert user == ["jobbie"] and words.index("USER") > words.index("RUN")
    assert dict(steps)["VOLUME"] == '["/data"]'
    assert dict(steps)["EXPOSE"].split() == ["7700", "7780"]
    cmd = __import__("json").loads(dict(steps)["CMD"])
    assert cmd == ["jobbie", "server", "--data-dir", "/data", "--bind", "tcp://0.0.0.0:7700"]


def test_the_container_command_is_one_the_cli_accepts():
    # The CMD's flags are checked by the CLI's own flag check (nothing runs: --help stops it).
    from jobbie.cli.main import check_flags
    cmd = __import__("json").loads(dict(dockerfile())["CMD"])
    check_flags(cmd[1:])  # exits 2 on a flag `jobbie server` does not take
