def test_enqueue_fetch_ack(node, client):
    # Given a running node
    # When a job is enqueued, fetched and acked
    job_id = client.enqueue("emails", {"to": "a@example.com"})
    jobs = client.fetch("emails", "w1")
    assert [j["job_id"] for j in jobs] == [job_id]
    assert jobs[0]["payload"] == {"to": "a@example.com"} and jobs[0]["attempt"] == 1
    assert client.ack(job_id, attempt=1, result={"sent": True}) == {"state": "completed"}
    # Then the job is completed with its result
    job = client.get_job(job_id)
    assert job["state"] == "completed" and job["result"] == {"sent": True}
