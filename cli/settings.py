"""`jobbie server` settings from three places: flags, JOBBIE_* variables and a TOML file.

For every flag of `jobbie server` (say `--http-bind`), a flag on the command line wins; else the
environment variable JOBBIE_HTTP_BIND; else the key `http-bind` (or `http_bind`) of the file
named by `--config` or JOBBIE_CONFIG, at the top level or in a `[server]` table; else the
flag's default. What comes from the environment or the file is turned into the flag it stands
for, so it is checked and parsed exactly as if it had been typed. An unknown key, a value of the
wrong type or a file that is not TOML is one line, before anything starts.
"""
from __future__ import annotations

import difflib
import inspect
import tomllib

#: Flags that are not settings (the config file itself).
NOT_SETTINGS = ("config",)


class SettingsError(Exception):
    """A setting that cannot be used; the message says which and why, in one line."""


def env_name(param: str) -> str:
    return "JOBBIE_" + param.upper()


def _as_flag_value(name: str, value, annotation, where: str) -> str:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if kind == "bool":
        if isinstance(value, bool):
            return "true" if value else "false"
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return "true"
        if text in ("false", "0", "no", "off"):
            return "false"
        raise SettingsError(f"{where}: {name} must be true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SettingsError(f"{where}: {name} must be a whole number, got {value!r}")
        text = str(value).strip()
        try:
            int(text.replace("_", ""))
        except ValueError:
            raise SettingsError(f"{where}: {name} must be a whole number, got {value!r}") from None
        return text.replace("_", "")
    if isinstance(value, list):  # e.g. peers = ["10.0.0.2:7800", "10.0.0.3:7800"]
        if not all(isinstance(v, str) for v in value):
            raise SettingsError(f"{where}: {name} must be a list of strings")
        return ",".join(value)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise SettingsError(f"{where}: {name} must be a string, got {value!r}")
    return str(value)


def read_config(path: str, names: list[str]) -> dict:
    """The settings of a TOML file, by parameter name. Raises SettingsError."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise SettingsError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config {path}: not valid TOML ({exc})") from None
    table = data.get("server", data) if isinstance(data.get("server"), dict) else data
    accepted = sorted(n.replace("_", "-") for n in names)
    out = {}
    for key, value in table.items():
        if key == "server" and isinstance(value, dict):
            continue
        name = key.replace("-", "_")
        if name not in names:
            near = difflib.get_close_matches(key.replace("_", "-"), accepted, n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise SettingsError(f"--config {path}: unknown key {key!r}{hint} (keys are the flags of "
                                "jobbie server: see jobbie server --help)")
        out[name] = value
    return out


def server_flags(command, given: set[str], config_path: str | None, environ) -> list[str]:
    """The flags to add for settings not given on the command line (environment, then config file)."""
    params = {n: p for n, p in inspect.signature(command).parameters.items() if n != "self"}
    names = [n for n in params if n not in NOT_SETTINGS]
    config_path = config_path or environ.get("JOBBIE_CONFIG")
    from_file = read_config(config_path, names) if config_path else {}
    extra = []
    for name in names:
        if name in given:
            continue
        variable = env_name(name)
        if variable in environ and environ[variable] != "":
            value = _as_flag_value(name, environ[variable], params[name].annotation, variable)
        elif name in from_file:
            value = _as_flag_value(name, from_file[name], params[name].annotation, f"--config {config_path}")
        else:
            continue
        extra.append(f"--{name.replace('_', '-')}={value}")
    return extra
