"""`jobbie server` settings: a flag wins over JOBBIE_* over the config file over the default."""
from __future__ import annotations

import pytest

from jobbie.cli.main import Cli
from jobbie.cli.settings import SettingsError, server_flags


def flags(tmp_path, given=(), config: str | None = None, **environ):
    path = None
    if config is not None:
        path = tmp_path / "jobbie.toml"
        path.write_text(config)
    return server_flags(Cli.server, set(given), str(path) if path else None, environ)


def test_every_server_flag_has_a_variable_and_a_config_key(tmp_path):
    # Given a value for every flag in the environment (booleans as words, numbers as text)
    import inspect
    params = [n for n in inspect.signature(Cli.server).parameters if n not in ("self", "config")]
    environ = {}
    for name in params:
        annotation = inspect.signature(Cli.server).parameters[name].annotation
        environ["JOBBIE_" + name.upper()] = {"bool": "yes", "int": "7"}.get(
            annotation if isinstance(annotation, str) else annotation.__name__, "x")
    out = flags(tmp_path, **environ)
    # Then each becomes its flag
    assert len(out) == len(params)
    assert "--durable=true" in out and "--snapshot-every=7" in out and "--http-bind=x" in out


def test_precedence_flag_then_environment_then_file(tmp_path):
    config = 'data-dir = "/srv/jobbie"\nhttp_bind = "127.0.0.1:9000"\ndurable = true\npeers = ["a:1", "b:2"]\n'
    out = flags(tmp_path, given={"data_dir"}, config=config, JOBBIE_HTTP_BIND="127.0.0.1:9100")
    assert "--http-bind=127.0.0.1:9100" in out          # the variable beats the file
    assert not any(f.startswith("--data-dir") for f in out)  # the flag given beats both
    assert "--durable=true" in out and "--peers=a:1,b:2" in out


def test_a_server_table_is_read_too(tmp_path):
    assert flags(tmp_path, config='[server]\nnode-id = "n2"\n') == ["--node-id=n2"]


def test_config_named_by_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('mirror = false\n')
    assert server_flags(Cli.server, set(), None, {"JOBBIE_CONFIG": str(path)}) == ["--mirror=false"]


@pytest.mark.parametrize("config,environ,words", [
    ('data-dri = "/x"\n', {}, ["unknown key 'data-dri'", "did you mean data-dir?"]),
    ('durable = "sometimes"\n', {}, ["durable must be true or false"]),
    ('snapshot-every = "many"\n', {}, ["snapshot_every must be a whole number"]),
    ('snapshot-every = true\n', {}, ["snapshot_every must be a whole number"]),
    ('peers = [1, 2]\n', {}, ["peers must be a list of strings"]),
    ('this is not toml', {}, ["not valid TOML"]),
    (None, {"JOBBIE_DURABLE": "maybe"}, ["JOBBIE_DURABLE: durable must be true or false"]),
])
def test_bad_settings_are_one_line(tmp_path, config, environ, words):
    with pytest.raises(SettingsError) as info:
        flags(tmp_path, config=config, **environ)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="no such file"):
        server_flags(Cli.server, set(), str(tmp_path / "nope.toml"), {})


def test_every_flag_of_every_command_has_a_help_line():
    from jobbie.cli.helptext import _described, commands
    from jobbie.cli.main import UNDOCUMENTED_FLAGS
    assert UNDOCUMENTED_FLAGS == {}
    import inspect
    for func in commands(Cli):
        params = [n for n, p in inspect.signature(func).parameters.items()
                  if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert set(params) <= _described(func.__doc__ or ""), func.__qualname__


def test_times_are_written_one_way_and_tables_show_ages():
    from jobbie.cli import render
    now = 1_796_400_000_000
    assert render.when(now) == "2026-12-04T16:00:00Z"
    assert render.ago(now - 42_000, now) == "42s ago" and render.ago(now - 3 * 3600_000, now) == "3h ago"
    assert render.ago(now + 300_000, now) == "in 5m" and render.ago(now, now) == "0s ago"
    assert render.ago(None) == "-" and render.when(0) == "-"
    assert render._time(now).startswith("2026-12-04T16:00:00Z (")


def test_the_raft_password_file_gives_its_first_line(tmp_path):
    from jobbie.cli.main import _password_from

    path = tmp_path / "pw"
    path.write_text("s3cret value\nignored\n")
    assert _password_from(str(path)) == "s3cret value"
    assert _password_from(None) == ""
