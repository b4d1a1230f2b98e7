"""`jobbie curve show|keygen`: the CURVE keys of a node started with --curve (mixed into cli.main.Cli)."""
from __future__ import annotations

import json
import os

from .common import _fail


class CurveCli:
    """CURVE keys of the client port (jobbie server --curve): the node's public key, and client key pairs."""

    def show(self, data_dir: str = "./jobbie-data", output: str = "text"):
        """Print the public key of the node whose data dir is DATA_DIR (what clients put in JOBBIE_CURVE_SERVER_KEY).

        Args:
          data_dir: The node's data dir (as given to jobbie server --data-dir).
        """
        from jobbie.actors.curve import CurveKeyError, load_node_keys, secret_path
        if output not in ("text", "json"):
            _fail(f"--output must be text or json, not {output!r}", 2)
        try:
            public, _ = load_node_keys(str(data_dir))
        except CurveKeyError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"--data-dir {data_dir}: cannot read its key pair ({exc.strerror})")
        key = public.decode()
        if output == "json":
            print(json.dumps({"public_key": key, "key_file": os.path.abspath(secret_path(str(data_dir)))}))
            return
        print(key)
        print(f"# clients: export JOBBIE_CURVE_SERVER_KEY='{key}'", flush=True)

    def keygen(self, name: str, out: str = ".", output: str = "text"):
        """Write a client key pair: OUT/NAME.key (public: copy it into the server's --curve-clients folder)
        and OUT/NAME.key_secret (secret, 0600: the client's JOBBIE_CURVE_CLIENT_KEY).

        Args:
          name: The key's name: the file names, and how the server's folder tells its clients apart.
          out: The folder to write both files in (made if missing; default the current one).
        """
        from jobbie.transport.curve import write_key_pair
        if output not in ("text", "json"):
            _fail(f"--output must be text or json, not {output!r}", 2)
        name = str(name)
        if not name or "/" in name or name.startswith("."):
            _fail(f"keygen: {name!r} is not a file name (no slash, not starting with a dot)", 2)
        folder = str(out)
        for path in (os.path.join(folder, name + ".key"), os.path.join(folder, name + ".key_secret")):
            if os.path.exists(path):
                _fail(f"keygen: {path} exists already; pick another name, or move it away first")
        try:
            public_path, secret_path, public = write_key_pair(folder, name)
        except OSError as exc:
            _fail(f"keygen: cannot write in {folder} ({exc.strerror or exc})")
        if output == "json":
            print(json.dumps({"public_key": public.decode(), "public_file": os.path.abspath(public_path),
                              "secret_file": os.path.abspath(secret_path)}))
            return
        print(f"wrote {public_path} (public key {public.decode()}): copy it into the server's --curve-clients "
              f"folder\nwrote {secret_path} (secret, mode 0600): the client uses it as\n"
              f"  export JOBBIE_CURVE_CLIENT_KEY={os.path.abspath(secret_path)}")


class CurveCommands:
    curve = CurveCli()
