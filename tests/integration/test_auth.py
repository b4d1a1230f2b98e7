"""A node started with --auth: the first admin token, roles, refusals, revocation, HTTP, CLI, audit.

One node serves the module; its first admin token is read from the supervisor's stderr, where it
is printed once.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from jobbie.transport import codec
from jobbie.transport.client import Client
from jobbie.transport.errors import PermissionDenied, Unauthenticated
from jobbie.transport.ops import OPS

from .conftest import Node, wait_for

TOKEN_LINE = re.compile(r"^\s+(tok_\S+\.\S+)\s*$", re.M)


class AuthNode(Node):
    """A node with --auth; `admin_token` is the first admin token it printed."""

    def __init__(self, data_dir):
        super().__init__(data_dir, ["--auth"], http=True)
        self.admin_token = None

    def wait_ready(self, timeout: float = 20.0):
        def token():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.supervisor_log()}")
            found = TOKEN_LINE.findall(self.supervisor_log())
            return found[-1] if found else None
        self.admin_token = wait_for(token, timeout, message="the first admin token")
        with Client(self.endpoint, timeout=1, retry_for=5, token=self.admin_token) as c:
            wait_for(lambda: c.call("cluster_status")["role"] == "leader", timeout, message="a leader")


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory):
    node = AuthNode(tmp_path_factory.mktemp("auth") / "node")
    node.start()
    yield node
    node.stop(timeout=15)
    node.kill_everything()


@pytest.fixture(scope="module")
def admin(auth_node):
    c = Client(auth_node.endpoint, timeout=5, retry_for=5, token=auth_node.admin_token)
    yield c
    c.close()


def make_token(admin, name, role):
    return admin.call("create_token", name=name, role=role)["token"]


def raw(endpoint, op, args=None, token=None):
    import zmq
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        msg = {"id": 1, "op": op, "args": args or {}}
        if token is not None:
            msg["token"] = token
        sock.send(codec.encode(msg))
        assert sock.poll(10_000)
        return codec.decode(sock.recv())
    finally:
        sock.close()


CLIENT_OPS = sorted(n for n, o in OPS.items() if o.path != "internal")


@pytest.mark.parametrize("op", CLIENT_OPS)
def test_without_a_token_every_op_but_health_is_refused(auth_node, op):
    reply = raw(auth_node.endpoint, op)
    if op == "health":
        assert reply["ok"]["role"] in ("leader", "follower", "candidate", "unknown"), reply
        return
    assert reply["err"]["code"] == "UNAUTHENTICATED", reply
    assert (reply["err"]["field"], reply["err"]["reason"]) == ("token", "token_required")


def test_a_worker_token_cannot_enqueue_or_delete(auth_node, admin):
    job_id = admin.enqueue("auth-q", {"n": 1})
    worker = make_token(admin, "w1", "worker")
    with Client(auth_node.endpoint, token=worker, retry_for=5) as c:
        started = time.monotonic()
        with pytest.raises(PermissionDenied) as info:
            c.enqueue("auth-q", {"n": 2})
        assert time.monotonic() - started < 1.0  # not retried
        assert (info.value.field, info.value.reason) == ("token", "role_forbids")
        with pytest.raises(PermissionDenied):
            c.delete(job_id)
        jobs = c.fetch(["auth-q"], "auth-worker")
        assert [j["job_id"] for j in jobs] == [job_id]
        assert c.ack(job_id, attempt=jobs[0]["attempt"], result=1)["state"] == "completed"
        assert c.get_job(job_id)["state"] == "completed"  # read is part of the worker role


def test_producer_and_read_tokens(auth_node, admin):
    producer = make_token(admin, "p1", "producer")
    reader = make_token(admin, "r1", "read")
    with Client(auth_node.endpoint, token=producer, retry_for=5) as p, \
            Client(auth_node.endpoint, token=reader, retry_for=5) as r:
        job_id = p.enqueue("auth-p", {"x": 1})
        with pytest.raises(PermissionDenied):
            p.fetch(["auth-p"], "p-worker")
        assert r.get_job(job_id)["state"] == "pending"
        assert r.call("search_jobs", queue="auth-p")["total"] >= 0
        for call in (lambda: r.enqueue("auth-p", 1), lambda: r.fetch(["auth-p"], "x"), lambda: r.cancel(job_id),
                     lambda: r.call("list_tokens")):
            with pytest.raises(PermissionDenied):
                call()


@pytest.mark.parametrize("token,reason", [("garbage", "token_invalid"), ("tok_nope.secret", "token_invalid"),
                                          ("", "token_invalid")])
def test_bad_tokens_are_refused(auth_node, token, reason):
    reply = raw(auth_node.endpoint, "list_queues", token=token)
    assert (reply["err"]["code"], reply["err"]["reason"]) == ("UNAUTHENTICATED", reason)


def test_a_revoked_token_is_refused_within_a_second_or_two(auth_node, admin):
    token = make_token(admin, "soon-gone", "read")
    with Client(auth_node.endpoint, token=token, retry_for=0) as c:
        c.queues()
        admin.call("revoke_token", token="soon-gone")
        started = time.monotonic()

        def refused():
            try:
                c.queues()
                return False
            except Unauthenticated as exc:
                return exc.reason == "token_revoked"
        wait_for(refused, 5, message="the revocation")
        assert time.monotonic() - started < 2.5
    listed = admin.call("list_tokens", revoked=True)["tokens"]
    assert any(t["name"] == "soon-gone" and t["revoked_at"] for t in listed)
    assert all("hash" not in t and "token" not in t for t in listed)


def test_names_are_unique_and_the_audit_trail_names_the_token(auth_node, admin):
    from jobbie.transport.errors import AlreadyExists
    make_token(admin, "dup", "read")
    with pytest.raises(AlreadyExists):
        admin.call("create_token", name="dup", role="read")
    job_id = admin.enqueue("auth-held", {"x": 1}, hold=True)
    admin.approve([job_id], note="fine")
    events = admin.audit(job_id=job_id)
    assert any(e["kind"] == "approved" and e["who"] == "token:admin" for e in events), events


def test_http_takes_a_bearer_token(auth_node, admin):
    worker = make_token(admin, "http-w", "worker")
    producer = make_token(admin, "http-p", "producer")
    url = auth_node.http_url
    assert httpx.get(url + "/v1/queues").status_code == 401
    assert httpx.get(url + "/v1/queues").json()["error"]["reason"] == "token_required"
    r = httpx.post(url + "/v1/queues/auth-h/jobs", json={"payload": 1}, headers={"authorization": f"Bearer {worker}"})
    assert r.status_code == 403 and r.json()["error"]["reason"] == "role_forbids"
    r = httpx.post(url + "/v1/queues/auth-h/jobs", json={"payload": 1}, headers={"authorization": f"Bearer {producer}"})
    assert r.status_code == 200
    assert httpx.get(url + "/metrics", headers={"authorization": f"Bearer {worker}"}).status_code == 200
    # The UI asks for a token, keeps it in an HttpOnly cookie, and then works
    with httpx.Client(base_url=url, follow_redirects=False) as ui:
        page = ui.get("/")
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
        form = ui.get("/ui/login")
        csrf = form.cookies["jobbie_csrf"]
        login = ui.post("/ui/login", data={"token": admin.token, "csrf": csrf, "next": "/"})
        assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
        assert ui.get("/").status_code == 200


def test_cli_token_commands(auth_node, admin):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBIE_")}
    env.update(JOBBIE_SERVER=auth_node.endpoint, JOBBIE_TOKEN=auth_node.admin_token)
    cli = [sys.executable, "-m", "jobbie.cli.main"]
    made = subprocess.run(cli + ["token", "create", "cli-made", "--role", "producer"], capture_output=True,
                          text=True, env=env, timeout=30)
    assert made.returncode == 0, made.stderr
    token = re.search(r"(tok_\S+\.\S+)", made.stdout).group(1)
    listed = subprocess.run(cli + ["token", "list"], capture_output=True, text=True, env=env, timeout=30)
    assert "cli-made" in listed.stdout and "producer" in listed.stdout and token.split(".")[1] not in listed.stdout
    without = dict(env, JOBBIE_TOKEN="")
    refused = subprocess.run(cli + ["queues"], capture_output=True, text=True, env=without, timeout=30)
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr and "JOBBIE_TOKEN" in refused.stderr


def test_the_first_token_is_printed_once_and_survives_a_restart(tmp_path):
    node = AuthNode(tmp_path / "node")
    try:
        node.start()
        first = node.admin_token
        node.stop(timeout=15)
        node.proc = None
        node.start(wait=False)
        with Client(node.endpoint, timeout=1, retry_for=10, token=first) as c:
            wait_for(lambda: c.call("cluster_status")["role"] == "leader", 20, message="the restarted node")
        assert TOKEN_LINE.findall(node.supervisor_log()) == [first]
    finally:
        node.stop(timeout=15)
        node.kill_everything()
