"""CURVE keys: key files and their modes, the node's key pair, the client settings and their
environment, the allowed client keys, the handshake-failure messages, and the --curve settings."""
from __future__ import annotations

import os
import stat

import pytest
import zmq

from jobbie.actors import curve as node_curve
from jobbie.cli.main import Cli
from jobbie.cli.settings import server_flags
from jobbie.transport import curve
from jobbie.transport.client import MECHANISM_MISMATCH, handshake_failed
from jobbie.transport.errors import InvalidArgument


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def pair(tmp_path):
    """A key pair written by write_key_pair: (public file, secret file, public key)."""
    return curve.write_key_pair(str(tmp_path / "keys"), "alice")


def test_write_key_pair_modes_and_contents(pair):
    public_path, secret_path, public = pair
    # Then the secret is the owner's only, the public file readable, and both name the same public key
    assert mode(secret_path) == 0o600 and mode(public_path) == 0o644
    assert mode(os.path.dirname(secret_path)) == 0o700
    assert curve.read_key_file(public_path, "f") == (public, None)
    got_public, secret = curve.read_key_file(secret_path, "f")
    assert got_public == public and zmq.curve_public(secret) == public
    # And no scratch folder is left behind
    assert sorted(os.listdir(os.path.dirname(secret_path))) == ["alice.key", "alice.key_secret"]


def test_write_key_pair_never_overwrites_a_secret(pair):
    with pytest.raises(FileExistsError):
        curve.write_key_pair(os.path.dirname(pair[1]), "alice")
    assert curve.read_key_file(pair[1], "f")[0] == pair[2]


def test_is_key():
    public, secret = zmq.curve_keypair()
    assert curve.is_key(public) and curve.is_key(secret.decode())
    assert not curve.is_key(public[:-1]) and not curve.is_key("x" * 39 + "'") and not curve.is_key(None)
    assert not curve.is_key(" " * 40)


def test_public_key_from_text_or_file(pair):
    public_path, secret_path, public = pair
    assert curve.public_key(public.decode()) == public
    assert curve.public_key(f"  {public.decode()}\n") == public
    assert curve.public_key(public_path) == public and curve.public_key(secret_path) == public
    with pytest.raises(InvalidArgument) as info:
        curve.public_key("nonsense", "JOBBIE_CURVE_SERVER_KEY")
    assert info.value.reason == "invalid_key" and info.value.message.startswith("JOBBIE_CURVE_SERVER_KEY: ")


def test_a_key_file_that_is_not_one(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("metadata\ncurve\n")
    with pytest.raises(InvalidArgument, match="not a CURVE key file"):
        curve.public_key(str(bad))
    bad.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(InvalidArgument, match="40 Z85"):
        curve.public_key(str(bad))


def test_a_secret_file_whose_halves_do_not_match(pair, tmp_path):
    other_public, _ = zmq.curve_keypair()
    text = open(pair[1]).read().replace(pair[2].decode(), other_public.decode())
    forged = tmp_path / "forged.key_secret"
    forged.write_text(text)
    with pytest.raises(InvalidArgument, match="not the one of its secret key"):
        curve.client_key_pair(str(forged))


def test_server_keys_one_for_all_or_one_per_endpoint():
    a, b = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    assert curve.server_keys(a.decode(), 3) == [a, a, a]
    assert curve.server_keys(f"{a.decode()}, {b.decode()}", 2) == [a, b]
    with pytest.raises(InvalidArgument, match="2 server keys for 3 endpoints"):
        curve.server_keys(f"{a.decode()},{b.decode()}", 3)


def test_client_key_pair(pair):
    public, secret = zmq.curve_keypair()
    assert curve.client_key_pair((public.decode(), secret.decode())) == (public, secret)
    assert curve.client_key_pair(pair[1])[0] == pair[2]
    with pytest.raises(InvalidArgument, match="only a public key"):
        curve.client_key_pair(pair[0])
    with pytest.raises(InvalidArgument, match="not the one of the secret key"):
        curve.client_key_pair((zmq.curve_keypair()[0], secret))
    with pytest.raises(InvalidArgument, match="cannot read"):
        curve.client_key_pair("/nonexistent/alice.key_secret")


def test_client_settings_arguments_environment_and_off(monkeypatch, pair):
    public, _ = zmq.curve_keypair()
    monkeypatch.delenv(curve.SERVER_KEY_ENV, raising=False)
    monkeypatch.delenv(curve.CLIENT_KEY_ENV, raising=False)
    # Nothing given, nothing set: plaintext
    assert curve.client_settings(endpoints=2) == (None, None)
    # The environment is the default
    monkeypatch.setenv(curve.SERVER_KEY_ENV, public.decode())
    monkeypatch.setenv(curve.CLIENT_KEY_ENV, pair[1])
    keys, own = curve.client_settings(endpoints=2)
    assert keys == [public, public] and own[0] == pair[2]
    # An argument wins, and "" turns CURVE off whatever the environment says
    other = zmq.curve_keypair()[0]
    assert curve.client_settings(other, endpoints=1)[0] == [other]
    assert curve.client_settings("", endpoints=1) == (None, None)
    # A bad variable names itself
    monkeypatch.setenv(curve.SERVER_KEY_ENV, "oops")
    with pytest.raises(InvalidArgument) as info:
        curve.client_settings()
    assert info.value.message.startswith("JOBBIE_CURVE_SERVER_KEY: 'oops'")
    # A client key without a server key is refused, not ignored
    monkeypatch.delenv(curve.SERVER_KEY_ENV)
    with pytest.raises(InvalidArgument, match="needs the server's public key"):
        curve.client_settings(client_keys=pair[1])


def test_the_node_key_pair_is_made_once_and_kept(tmp_path):
    data_dir = str(tmp_path / "data")
    os.makedirs(data_dir, mode=0o700)
    # Given no key pair: one is made
    public, created = node_curve.ensure_node_keys(data_dir)
    assert created and mode(node_curve.secret_path(data_dir)) == 0o600
    # When asked again: the same one, not made again
    assert node_curve.ensure_node_keys(data_dir) == (public, False)
    assert node_curve.load_node_keys(data_dir)[0] == public
    # And a widened mode is narrowed again
    os.chmod(node_curve.secret_path(data_dir), 0o644)
    node_curve.ensure_node_keys(data_dir)
    assert mode(node_curve.secret_path(data_dir)) == 0o600


def test_no_node_key_pair_is_one_line(tmp_path):
    with pytest.raises(node_curve.CurveKeyError, match="first start with --curve"):
        node_curve.load_node_keys(str(tmp_path))


def test_node_client_curve(tmp_path):
    from jobbie.actors.config import NodeConfig
    data_dir = str(tmp_path)
    public, _ = node_curve.ensure_node_keys(data_dir)
    assert node_curve.node_client_curve(NodeConfig(data_dir=data_dir)) == (None, None)
    server_key, (own_public, own_secret) = node_curve.node_client_curve(NodeConfig(data_dir=data_dir, curve=True))
    assert server_key == own_public == public and zmq.curve_public(own_secret) == public


def test_client_keys_follow_the_folder(tmp_path, pair):
    # Given an empty folder and the node's own key
    folder = tmp_path / "clients"
    folder.mkdir()
    own = zmq.curve_keypair()[0]
    keys = node_curve.ClientKeys(str(folder), own)
    stranger = zmq.curve_keypair()[0]
    # Then only the node itself is let in
    assert keys.callback("*", own) and not keys.callback("*", pair[2]) and not keys.callback("*", stranger)
    # When alice's public file is put there, she is; a bad file beside it is skipped
    os.replace(pair[0], folder / "alice.key")
    (folder / "broken.key").write_text("not a key\n")
    (folder / "notes.txt").write_text("ignored\n")
    assert keys.callback("*", pair[2]) and not keys.callback("*", stranger)
    # When it is removed, she is not
    os.remove(folder / "alice.key")
    assert not keys.callback("*", pair[2]) and keys.callback("*", own)
    # When the folder is gone, only the node itself
    os.remove(folder / "broken.key")
    os.remove(folder / "notes.txt")
    folder.rmdir()
    assert not keys.callback("*", pair[2]) and keys.callback("*", own)


def test_check_client_folder(tmp_path, pair):
    assert node_curve.check_client_folder(os.path.dirname(pair[0])) == 1
    with pytest.raises(node_curve.CurveKeyError, match="no such folder"):
        node_curve.check_client_folder(str(tmp_path / "missing"))
    (tmp_path / "keys" / "broken.key").write_text("x\n")
    with pytest.raises(node_curve.CurveKeyError, match="broken.key"):
        node_curve.check_client_folder(str(tmp_path / "keys"))


@pytest.mark.parametrize("event,value,curve_on,words", [
    (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, MECHANISM_MISMATCH, False,
     ["refuses plaintext", "is the server using --curve? set JOBBIE_CURVE_SERVER_KEY"]),
    (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0, True, ["refused the CURVE handshake", "JOBBIE_CURVE_SERVER_KEY"]),
    (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, True, ["--curve-clients", "JOBBIE_CURVE_CLIENT_KEY"]),
    (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, MECHANISM_MISMATCH, True, ["does not speak CURVE", "unset"]),
    (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, False, ["refused the handshake", "--bind port", "JOBBIE_CURVE_SERVER_KEY"]),
])
def test_handshake_failures_say_what_to_do(event, value, curve_on, words):
    error = handshake_failed("tcp://127.0.0.1:7700", 2.0, event, value, curve_on)
    assert error.code == "UNAVAILABLE" and error.reason == "handshake_failed"
    assert "\n" not in error.message and "tcp://127.0.0.1:7700 within 2 s" in error.message
    assert all(w in error.message for w in words), error.message


def test_curve_settings_from_variables_and_the_config_file(tmp_path):
    # Given JOBBIE_CURVE=1 and JOBBIE_CURVE_CLIENTS, or the same in a config file
    assert server_flags(Cli.server, set(), None, {"JOBBIE_CURVE": "1", "JOBBIE_CURVE_CLIENTS": "/etc/k"}) == \
        ["--curve=true", "--curve-clients=/etc/k"]
    path = tmp_path / "jobbie.toml"
    path.write_text('curve = true\ncurve-clients = "/etc/k"\n')
    assert server_flags(Cli.server, set(), str(path), {}) == ["--curve=true", "--curve-clients=/etc/k"]
    # And --nocurve on the command line wins over both
    assert server_flags(Cli.server, {"curve"}, str(path), {"JOBBIE_CURVE": "1"}) == ["--curve-clients=/etc/k"]
    # The client-side variables are no server settings
    assert server_flags(Cli.server, set(), None, {"JOBBIE_CURVE_SERVER_KEY": "k", "JOBBIE_CURVE_CLIENT_KEY": "f"}) == []


def test_nocurve_counts_as_given(monkeypatch):
    from jobbie.cli.main import server_settings
    monkeypatch.delenv("JOBBIE_CONFIG", raising=False)
    monkeypatch.setenv("JOBBIE_CURVE", "1")
    assert not any(f.startswith("--curve=") for f in server_settings(["server", "--nocurve"]))
    assert "--curve=true" in server_settings(["server"])
