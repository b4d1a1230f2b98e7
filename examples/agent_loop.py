"""Agent loops under server guardrails, with a deterministic fake model (no network).

Start a node, then run this:

    jobbie server --data-dir /tmp/jobbie-agents &
    python examples/agent_loop.py

It enqueues four agent jobs and runs a worker for them:

1. "finishes": counts up to a target and answers;
2. "expensive": each iteration costs $0.02 against max_cost_usd $0.05, so the server holds it
   (hold_reason max_cost) after the third iteration;
3. "asks": wants a person to approve a tool call (Hold); this script approves it, and the
   agent sees the decision in job.approval on its next iteration;
4. a replay of "finishes" from iteration 3 with a bigger step, compared with the original.

Everything it prints comes from the server: states, iteration records, the audit trail.
"""
from __future__ import annotations

import argparse
import threading
import time

from jobbie import Client, Continue, Done, Hold, Worker

QUEUE = "ai.examples"


def fake_model(goal: dict, state: dict, iteration: int, approval: dict | None):
    """Deterministic stand-in for an LLM step (same inputs, same output): (answer, tokens used)."""
    state = dict(state or {"total": 0})
    if goal.get("needs_approval") and not state.get("approved"):
        if approval is None:
            return Hold("run shell command", {"cmd": "ls /tmp"}, checkpoint=state), 0
        state["approved"] = approval["decision"] == "approved"
    state["total"] += goal.get("step", 1)
    tokens = 1000 + 10 * iteration
    if state["total"] >= goal["target"]:
        return Done(f"reached {state['total']} in {iteration} iterations"), tokens
    return Continue(state, f"iteration {iteration}: total {state['total']}"), tokens


def handler(job):
    answer, tokens = fake_model(job.payload, job.checkpoint, job.iteration, job.approval)
    if isinstance(answer, Hold):
        return answer
    job.report_usage(input_tokens=tokens, output_tokens=tokens // 10, model="fake-model",
                     cost_usd=job.payload.get("cost", 0.001))
    return answer


def wait(client, job_id, states, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise SystemExit(f"job {job_id} did not reach {states} within {timeout:g} s (it is {job['state']})")


def show(client, title, job_id):
    job = client.get_job(job_id)
    print(f"\n== {title}: {job_id} is {job['state']}"
          + (f" (hold_reason {job['hold_reason']})" if job.get("hold_reason") else ""))
    for it in client.iterations(job_id):
        print(f"   {it['n']:>2}  {it['status']:<9} ${it['cost_usd']:.3f}  {it['result']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=None, help="node endpoint (default $JOBBIE_SERVER or tcp://127.0.0.1:7700)")
    args = parser.parse_args()
    client = Client(args.server)
    finishes = client.enqueue(QUEUE, {"target": 10, "step": 2}, agent={"max_iterations": 20})
    expensive = client.enqueue(QUEUE, {"target": 100, "cost": 0.02}, agent={"max_cost_usd": 0.05})
    asks = client.enqueue(QUEUE, {"target": 3, "needs_approval": True}, agent={"max_iterations": 10})

    worker = Worker({QUEUE: handler}, client=client, concurrency=4, wait_ms=200)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait(client, finishes, {"completed"})
        show(client, "finishes", finishes)
        wait(client, expensive, {"held"})
        show(client, "expensive (max_cost_usd 0.05)", expensive)
        wait(client, asks, {"held"})
        print(f"\n== asks: held for {client.get_job(asks)['hold_reason']!r}, "
              f"payload {client.get_job(asks)['hold_payload']}; approving it")
        client.approve(asks, note="ls is fine", actor="example")
        wait(client, asks, {"completed"})
        show(client, "asks, after approval", asks)

        replay = client.replay(finishes, from_iteration=3, payload={"step": 3})
        wait(client, replay, {"completed"})
        show(client, "replay of finishes from iteration 3 with step 3", replay)
        original = {i["n"]: i for i in client.iterations(finishes)}
        first = next((i["n"] for i in client.iterations(replay)
                      if i["n"] in original and i["digest"] != original[i["n"]]["digest"]), None)
        print(f"\n   compared with the original: they first differ at iteration {first} "
              f"(jobbie compare {finishes} {replay})")
    finally:
        worker.stop()
        thread.join(10)
    events = client.audit(job_id=asks)
    print("\n== audit of asks: " + ", ".join(f"{e['kind']} by {e['who']}" for e in reversed(events)))
    client.close()


if __name__ == "__main__":
    main()
