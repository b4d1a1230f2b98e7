"""The web UI: server-rendered pages (Jinja2) over the same gateway link as the JSON API.

Pages read with the ops a client has; every button is a form POST to /ui/do, which sends one op
(or a bulk) and redirects back with a notice. Nothing is loaded from elsewhere: the stylesheet is
in the package and the charts are inline SVG (charts.py).

Cross-site requests: a form POST must carry the token of the `jobbie_csrf` cookie (SameSite=Strict,
set by any page), and a request whose Origin names another site is refused.
"""
from __future__ import annotations

import datetime
import hmac
import json
import os
import secrets
import time
import urllib.parse
from collections import deque

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from jobbie.transport.ops_search import BULK_ACTIONS, PRIORITIES, SORTS, STATE_NAMES

from . import charts
from .api import read_body

HERE = os.path.dirname(os.path.abspath(__file__))
CSRF_COOKIE = "jobbie_csrf"
#: How often the dashboard's rate sampler asks for the gateway's answer counts, and how many it keeps.
SAMPLE_EVERY_S = 5.0
SAMPLES_KEPT = 13
#: The search page's filters: (name, label, kind) — the search_jobs args a person types.
SEARCH_FIELDS = (("queue", "queue", "text"), ("state", "state", "state"), ("priority", "priority", "priority"),
                 ("tag", "tags (k=v, comma-separated)", "text"), ("payload_contains", "payload contains", "text"),
                 ("payload_jq", "payload jq", "text"), ("error_contains", "error contains", "text"),
                 ("worker_id", "worker", "text"), ("has_errors", "has errors", "bool"),
                 ("job_id_prefix", "id starts with", "text"), ("batch_id", "batch", "text"),
                 ("unique_key", "unique key", "text"), ("attempt_min", "attempts at least", "int"),
                 ("created_after", "created after (ms)", "int"), ("created_before", "created before (ms)", "int"))


def when(ms) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(ms, now_ms=None) -> str:
    if not ms:
        return "-"
    seconds = ((now_ms or time.time() * 1000) - ms) / 1000
    future = seconds < 0
    seconds = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= size:
            text = f"{int(seconds // size)}{unit}"
            break
    else:
        text = "0s"
    return f"in {text}" if future else f"{text} ago"


def pretty(value) -> str:
    def default(v):
        if isinstance(v, (bytes, bytearray)):
            return f"<{len(v)} bytes>"
        return str(v)
    return json.dumps(value, indent=2, ensure_ascii=False, default=default, sort_keys=True)


def money(value) -> str:
    return "-" if value is None else charts.fmt(float(value), "usd")


TOKEN_COOKIE = "jobbie_token"


class NeedsLogin(Exception):
    """The node runs with --auth and the browser has no token it takes."""


def token_of(request: Request) -> str | None:
    """The API token of this browser (cookie set by /ui/login), or of an `Authorization: Bearer` header."""
    from .api import bearer
    return request.cookies.get(TOKEN_COOKIE) or bearer(request)


class Rates:
    """Answers per second of this node's gateway, from cluster_status samples taken every few seconds."""

    def __init__(self):
        self.samples: deque = deque(maxlen=SAMPLES_KEPT)

    def add(self, at: float, status: dict):
        counts: dict = {}
        for op, code, n in (status.get("gateway") or {}).get("answers") or ():
            if code == "OK":
                counts[op] = counts.get(op, 0) + n
        self.samples.append((at, counts))

    def per_second(self) -> dict | None:
        if len(self.samples) < 2:
            return None
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        span = t1 - t0
        if span <= 0:
            return None
        out = {}
        for label, ops in (("enqueued", ("enqueue", "enqueue_batch")), ("completed", ("ack",)),
                           ("failed", ("fail",)), ("fetched", ("fetch",))):
            delta = sum(max(0, last.get(op, 0) - first.get(op, 0)) for op in ops)
            out[label] = delta / span
        out["window_s"] = span
        return out


class Ui:
    def __init__(self, link, version: str):
        self.link = link
        self.version = version
        self.rates = Rates()
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.filters.update(when=when, ago=ago, pretty=pretty, money=money)

    async def sample(self):
        status = await self.link.ok("cluster_status")
        if status is not None:
            self.rates.add(time.monotonic(), status)

    # ---------------------------------------------------------------- plumbing
    def render(self, request: Request, template: str, **context) -> Response:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        params = request.query_params
        html = self.env.get_template(template).render(
            csrf=token, notice=params.get("notice"), error=params.get("error"), version=self.version,
            path=request.url.path, here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
            now_ms=int(time.time() * 1000), states=STATE_NAMES, signed_in=bool(request.cookies.get(TOKEN_COOKIE)),
            **context)
        response = HTMLResponse(html, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                               "Content-Security-Policy": "default-src 'self'; style-src 'self'; "
                                               "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"})
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    async def get(self, request: Request, op: str, args: dict | None = None):
        """(ok map, None) or (None, err map). A node with --auth that refuses the browser's token (or its
        lack of one) raises NeedsLogin: the page sends the browser to /ui/login."""
        reply = await self.link.call(op, args or {}, "ui", token_of(request))
        err = reply.get("err")
        if err and err.get("code") == "UNAUTHENTICATED":
            raise NeedsLogin(err.get("message", ""))
        return reply.get("ok"), err

    def failed(self, request: Request, title: str, err: dict, status: int = 502) -> Response:
        code = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400}.get(err.get("code"), status)
        response = self.render(request, "error.html", title=title, err=err)
        response.status_code = code
        return response

    # ------------------------------------------------------------------- pages
    async def dashboard(self, request: Request) -> Response:
        status, err = await self.get(request, "cluster_status")
        if status is None:
            return self.failed(request, "The gateway does not answer", err or {}, 503)
        self.rates.add(time.monotonic(), status)
        queues, _ = await self.get(request, "list_queues")
        return self.render(request, "dashboard.html", title="Dashboard", status=status,
                           queues=(queues or {}).get("queues", []), rates=self.rates.per_second())

    async def queue(self, request: Request) -> Response:
        name = request.path_params["queue"]
        state = request.query_params.get("state", "pending")
        if state not in STATE_NAMES:
            state = "pending"
        queues, err = await self.get(request, "list_queues")
        if queues is None:
            return self.failed(request, "The gateway does not answer", err or {}, 503)
        row = next((q for q in queues["queues"] if q["name"] == name), None)
        if row is None:
            return self.failed(request, f"No queue {name}", {"code": "NOT_FOUND", "message":
                               f"queue {name!r} has never had a job"}, 404)
        found, search_err = await self.get(request, "search_jobs", {"queue": name, "state": [state], "limit": 50})
        return self.render(request, "queue.html", title=f"Queue {name}", q=row, state=state,
                           jobs=(found or {}).get("jobs", []), total=(found or {}).get("total"),
                           search_error=search_err)

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job, err = await self.get(request, "get_job", {"job_id": job_id})
        if job is None:
            return self.failed(request, f"Job {job_id}", err or {})
        job = job["job"] if "job" in job and isinstance(job.get("job"), dict) else job
        iterations = None
        if job.get("agent"):
            found, _ = await self.get(request, "list_iterations", {"job_id": job_id, "limit": 200})
            iterations = (found or {}).get("iterations")
        return self.render(request, "job.html", title=f"Job {job_id}", job=job, iterations=iterations)

    async def search(self, request: Request) -> Response:
        from .core import args_from_query
        params = [(k, v) for k, v in request.query_params.multi_items() if v != "" and k != "notice"]
        form = {k: v for k, v in params}
        filters = [(k, v) for k, v in params if k not in ("sort", "order", "limit", "cursor", "error")]
        result, err = None, None
        if filters:
            try:
                args = args_from_query("search_jobs", params)
                args.setdefault("limit", 50)
                result, err = await self.get(request, "search_jobs", args)
            except Exception as exc:  # InvalidArgument from the query reader
                err = exc.to_wire() if hasattr(exc, "to_wire") else {"message": str(exc)}
        return self.render(request, "search.html", title="Search", fields=SEARCH_FIELDS, form=form,
                           priorities=PRIORITIES, sorts=SORTS, result=result, search_error=err,
                           filter_json=json.dumps(filters), actions=[a for a in BULK_ACTIONS
                                                                     if a in ("retry", "cancel", "delete")])

    async def held(self, request: Request) -> Response:
        args = {"limit": 200}
        if request.query_params.get("queue"):
            args["queue"] = request.query_params["queue"]
        found, err = await self.get(request, "list_held", args)
        if found is None:
            return self.failed(request, "Held jobs", err or {})
        return self.render(request, "held.html", title="Held jobs", jobs=found["jobs"], has_more=found["has_more"])

    async def usage(self, request: Request) -> Response:
        now_ms = int(time.time() * 1000)
        try:
            days = max(1, min(90, int(request.query_params.get("days", "14"))))
        except ValueError:
            days = 14
        since = now_ms - days * 86_400_000
        by_day, err = await self.get(request, "usage_summary", {"since": since, "group_by": ["day"]})
        by_queue, _ = await self.get(request, "usage_summary", {"since": since, "group_by": ["queue"], "limit": 20})
        by_model, _ = await self.get(request, "usage_summary", {"since": since, "group_by": ["model"], "limit": 20})
        budgets, budget_err = await self.get(request, "list_budgets")
        day_items = []
        if by_day:
            spent = {g["key"]["day"]: g["cost_usd"] for g in by_day["groups"]}
            start = (since // 86_400_000) * 86_400_000
            for day in range(start, now_ms + 1, 86_400_000):
                label = datetime.datetime.fromtimestamp(day / 1000, datetime.timezone.utc).strftime("%m-%d")
                day_items.append((label, float(spent.get(day, 0.0))))

        def bars(summary, key):
            if not summary:
                return []
            return [(str(g["key"].get(key) or "(none)"), float(g["cost_usd"])) for g in summary["groups"]]

        return self.render(
            request, "usage.html", title="Usage and budgets", days=days, usage_error=err, budget_error=budget_err,
            totals=(by_day or {}).get("totals"),
            day_chart=charts.vbars(day_items, title="Spend per day"),
            queue_chart=charts.hbars(bars(by_queue, "queue"), title="Spend by queue"),
            model_chart=charts.hbars(bars(by_model, "model"), title="Spend by model"),
            budgets=(budgets or {}).get("budgets", []))

    # ----------------------------------------------------------------- actions
    def allowed(self, request: Request, form: dict) -> str | None:
        """Why this POST is refused as cross-site, or None."""
        origin = request.headers.get("origin")
        if origin and origin != "null":
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin != own:
                return f"the request came from {origin}, not from this UI"
        cookie = request.cookies.get(CSRF_COOKIE)
        given = form.get("csrf", "")
        if not cookie or not given or not hmac.compare_digest(cookie, given):
            return "the form's token does not match this browser's (reload the page and try again)"
        return None

    async def do(self, request: Request) -> Response:
        body = await read_body(request)
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        form = {}
        for k, v in pairs:
            form.setdefault(k, []).append(v)
        one = {k: v[0] for k, v in form.items()}
        back = one.get("next") or "/"
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        why = self.allowed(request, one)
        if why:
            return Response(f"refused: {why}\n", status_code=403, media_type="text/plain")
        action = one.get("action", "")
        try:
            op, args, done = self.action(action, one, form)
        except ValueError as exc:
            return self.redirect(back, error=str(exc))
        reply = await self.link.call(op, args, "ui", token_of(request))
        if "err" in reply:
            err = reply["err"]
            field = f" ({err['field']})" if err.get("field") else ""
            return self.redirect(back, error=f"{action}: {err.get('message')}{field}")
        if op in ("delete_job",) and back.startswith("/ui/jobs/"):
            back = "/"
        ok = reply["ok"]
        if isinstance(ok, dict) and ok.get("errors"):
            return self.redirect(back, error=f"{done}; refused: " + "; ".join(
                f"{e.get('job_id')}: {e.get('message')}" for e in ok["errors"][:5]))
        if op == "bulk":
            done += f" (bulk {ok.get('bulk_id')}: {ok.get('matched', ok.get('total', '?'))} jobs)"
        return self.redirect(back, notice=done)

    def redirect(self, back: str, **message) -> Response:
        clean = urllib.parse.urlsplit(back)
        kept = [(k, v) for k, v in urllib.parse.parse_qsl(clean.query) if k not in ("notice", "error")]
        query = urllib.parse.urlencode(kept + list(message.items()))
        sep = "?" if query else ""
        return RedirectResponse(f"{clean.path}{sep}{query}", status_code=303)

    def action(self, action: str, one: dict, form: dict) -> tuple[str, dict, str]:
        """(op, args, what to say when done) for a form. Raises ValueError for a form that is not complete."""
        job_ids = [j for j in form.get("job_id", []) if j]
        note = one.get("note") or None
        if action in ("retry", "cancel", "delete"):
            if len(job_ids) != 1:
                raise ValueError(f"{action}: pick one job")
            op = {"retry": "retry_job", "cancel": "cancel_job", "delete": "delete_job"}[action]
            return op, {"job_id": job_ids[0]}, f"{action}: {job_ids[0]}"
        if action in ("approve", "reject"):
            if not job_ids:
                raise ValueError(f"{action}: select at least one held job")
            args = {"job_ids": job_ids, "actor": "ui"}
            if note:
                args["note"] = note
            verb = "approved" if action == "approve" else "rejected"
            return f"{action}_job", args, f"{verb} {len(job_ids)} job{'s' if len(job_ids) != 1 else ''}"
        if action in ("pause", "resume"):
            return f"{action}_queue", {"queue": one.get("queue", "")}, f"{action}d {one.get('queue')}"
        if action == "concurrency":
            text = one.get("max", "").strip()
            value = None if text in ("", "none", "unlimited") else _int(text, "max")
            return "set_concurrency", {"queue": one.get("queue", ""), "max": value}, \
                f"concurrency of {one.get('queue')}: {value or 'unlimited'}"
        if action == "throttle":
            if not one.get("rate", "").strip():
                return "remove_throttle", {"queue": one.get("queue", "")}, f"throttle of {one.get('queue')} removed"
            rate, period = _int(one.get("rate", ""), "rate"), _int(one.get("period_ms", ""), "period_ms")
            return "set_throttle", {"queue": one.get("queue", ""), "rate": rate, "period_ms": period}, \
                f"throttle of {one.get('queue')}: {rate} per {period} ms"
        if action.startswith("bulk_"):
            verb = action.removeprefix("bulk_")
            if verb not in ("retry", "cancel", "delete", "approve", "reject"):
                raise ValueError(f"unknown bulk action {verb}")
            if job_ids:
                args = {"action": verb, "job_ids": job_ids}
            else:
                from .core import args_from_query
                filters = json.loads(one.get("filter") or "[]")
                if not filters:
                    raise ValueError("bulk: select jobs, or search with at least one filter")
                args = {"action": verb, "filter": args_from_query("search_jobs", [tuple(f) for f in filters])}
            if note and verb in ("approve", "reject"):
                args["note"] = note
            return "bulk", args, f"{verb} started"
        raise ValueError(f"unknown action {action!r}")

    async def login(self, request: Request) -> Response:
        """GET: the form. POST: keep the token in an HttpOnly cookie, if the node takes it."""
        if request.method == "GET":
            return self.render(request, "login.html", title="Sign in", next=request.query_params.get("next", "/"))
        body = await read_body(request)
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        why = self.allowed(request, form)
        if why:
            return Response(f"refused: {why}\n", status_code=403, media_type="text/plain")
        back = form.get("next") or "/"
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        token = form.get("token", "").strip()
        reply = await self.link.call("list_queues", {}, "ui", token)
        err = reply.get("err") or {}
        if err.get("code") == "UNAUTHENTICATED":
            return self.redirect("/ui/login", error=err.get("message", "the token was refused"), next=back)
        response = RedirectResponse(back, status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(TOKEN_COOKIE, path="/")
        return response

    def guarded(self, page):
        async def endpoint(request: Request) -> Response:
            try:
                return await page(request)
            except NeedsLogin:
                target = urllib.parse.urlencode({"next": str(request.url.path)})
                return RedirectResponse(f"/ui/login?{target}", status_code=303)
        endpoint.__name__ = page.__name__
        return endpoint

    def routes(self) -> list:
        g = self.guarded
        return [
            Route("/", g(self.dashboard), methods=["GET"]),
            Route("/ui/queues/{queue}", g(self.queue), methods=["GET"]),
            Route("/ui/jobs/{job_id}", g(self.job), methods=["GET"]),
            Route("/ui/search", g(self.search), methods=["GET"]),
            Route("/ui/held", g(self.held), methods=["GET"]),
            Route("/ui/usage", g(self.usage), methods=["GET"]),
            Route("/ui/do", g(self.do), methods=["POST"]),
            Route("/ui/login", self.login, methods=["GET", "POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
        ]


def _int(text: str, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text[:32]!r}") from None
