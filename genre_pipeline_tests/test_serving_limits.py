"""The serving process's own machinery, without a model: micro-batching, the bounded queue and its
deadline, API keys and the rate limit."""

import asyncio
import threading
import time

import pytest

from genre_pipeline import settings
from genre_pipeline.serving import auth
from genre_pipeline.serving.batching import BatchingOptions, MicroBatcher, Overloaded

KEY, OTHER_KEY = "k" * 20 + "-first", "k" * 20 + "-second"


def _echo_model(calls: list, release: threading.Event | None = None, fail_on: str | None = None):
    """A stand-in model: each row's answer is its own id; records every call's rows."""

    def predict(rows):
        if release is not None:
            release.wait(10)
        calls.append([row["id"] for row in rows])
        if fail_on is not None and any(row["id"] == fail_on for row in rows):
            raise ValueError(f"row {fail_on} is bad")
        return "model-v1", [f"answer-{row['id']}" for row in rows]

    return predict


async def _with_batcher(predict, options, body):
    observed = []
    batcher = MicroBatcher(predict, options, observe=lambda rows, seconds: observed.append(rows))
    batcher.start()
    try:
        return await body(batcher), observed
    finally:
        await batcher.stop()


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_rows():
    calls = []

    async def body(batcher):
        jobs = [[{"id": f"m{i}"}] for i in range(10)] + [[{"id": "b1"}, {"id": "b2"}, {"id": "b3"}]]
        return await asyncio.gather(*(batcher.submit(rows) for rows in jobs))

    options = BatchingOptions(max_rows=8, max_wait_s=0.05)
    results, observed = asyncio.run(_with_batcher(_echo_model(calls), options, body))
    assert [answers for _, answers in results] == [[f"answer-m{i}"] for i in range(10)] + [
        ["answer-b1", "answer-b2", "answer-b3"]
    ]
    assert all(model == "model-v1" for model, _ in results)
    assert len(calls) < 11 and max(observed) > 1  # gathered: fewer model calls than requests
    assert sorted(row for call in calls for row in call) == sorted([f"m{i}" for i in range(10)] + ["b1", "b2", "b3"])


def test_a_full_queue_refuses_at_once_with_a_retry_after():
    calls, release = [], threading.Event()

    async def body(batcher):
        running = asyncio.ensure_future(batcher.submit([{"id": "first"}]))
        await asyncio.sleep(0.05)  # the worker has taken it and is blocked in the model
        queued = asyncio.ensure_future(batcher.submit([{"id": "queued"}]))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit([{"id": "one too many"}])
        waited = time.monotonic() - started
        release.set()
        return refused.value, waited, await running, await queued

    options = BatchingOptions(max_rows=1, max_wait_s=0, max_queue=1, deadline_s=5)
    (refusal, waited, first, queued), _ = asyncio.run(_with_batcher(_echo_model(calls, release), options, body))
    assert refusal.reason == "queue_full" and refusal.retry_after_s >= 1 and waited < 0.5
    assert first[1] == ["answer-first"] and queued[1] == ["answer-queued"]
    assert ["one too many"] not in calls


def test_a_request_not_started_by_its_deadline_gets_overloaded_and_is_never_run():
    calls, release = [], threading.Event()

    async def body(batcher):
        blocking = asyncio.ensure_future(batcher.submit([{"id": "slow"}]))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as late:
            await batcher.submit([{"id": "late"}])
        release.set()
        # Started before its deadline: answered, however long the model took.
        slow = await blocking
        await asyncio.sleep(0.2)  # the worker takes the expired job and drops it
        return late.value, slow

    options = BatchingOptions(max_rows=1, max_wait_s=0, max_queue=4, deadline_s=0.3)
    (late, slow), _ = asyncio.run(_with_batcher(_echo_model(calls, release), options, body))
    assert late.reason == "deadline"
    assert slow[1] == ["answer-slow"]
    assert calls == [["slow"]]


def test_one_bad_row_fails_only_its_own_request():
    calls = []

    async def body(batcher):
        jobs = [[{"id": "good-1"}], [{"id": "bad"}], [{"id": "good-2"}]]
        return await asyncio.gather(*(batcher.submit(rows) for rows in jobs), return_exceptions=True)

    options = BatchingOptions(max_rows=8, max_wait_s=0.05)
    (good_1, bad, good_2), _ = asyncio.run(_with_batcher(_echo_model(calls, fail_on="bad"), options, body))
    assert good_1[1] == ["answer-good-1"] and good_2[1] == ["answer-good-2"]
    assert isinstance(bad, ValueError) and "row bad is bad" in str(bad)


def test_keys_are_required_and_checked_from_either_header():
    gate = auth.Gatekeeper([KEY, OTHER_KEY])
    caller, refusal = gate.check({}, "10.0.0.1")
    assert refusal.status == 401 and "required" in refusal.message and "WWW-Authenticate" in refusal.headers
    _, refusal = gate.check({"authorization": "Bearer not-a-key-of-this-server"}, "10.0.0.1")
    assert refusal.status == 401 and "not valid" in refusal.message
    assert KEY not in refusal.message
    caller, refusal = gate.check({"authorization": f"Bearer {KEY}"}, "10.0.0.1")
    assert refusal is None and caller == auth.key_id(KEY) and KEY not in caller
    caller, refusal = gate.check({"x-api-key": OTHER_KEY}, "10.0.0.1")
    assert refusal is None and caller == auth.key_id(OTHER_KEY)


def test_the_rate_limit_is_per_key_with_a_retry_after():
    gate = auth.Gatekeeper([KEY, OTHER_KEY], rate_per_s=2, burst=3)
    first = [gate.check({"x-api-key": KEY}, "a")[1] for _ in range(3)]
    assert first == [None, None, None]
    _, limited = gate.check({"x-api-key": KEY}, "a")
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert gate.check({"x-api-key": OTHER_KEY}, "a")[1] is None  # another key has its own bucket
    time.sleep(0.6)  # one token back at 2 per second
    assert gate.check({"x-api-key": KEY}, "a")[1] is None


def test_open_servers_limit_per_address():
    gate = auth.Gatekeeper([], rate_per_s=1, burst=1)
    assert gate.check({}, "10.0.0.1")[1] is None
    assert gate.check({}, "10.0.0.1")[1].status == 429
    assert gate.check({}, "10.0.0.2")[1] is None


def test_keys_come_from_a_file_and_the_environment_and_short_ones_are_refused(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the web team\n{KEY}\n\n  {OTHER_KEY}  \n")
    env_keys = settings.serving_api_keys({settings.API_KEYS_ENV: "e" * 24 + ", " + "f" * 24})
    assert auth.load_keys(keys_file, env_keys) == [KEY, OTHER_KEY, "e" * 24, "f" * 24]
    with pytest.raises(auth.ApiKeysError, match="shorter than 16"):
        auth.load_keys(None, ["short"])
    with pytest.raises(auth.ApiKeysError, match="cannot read"):
        auth.load_keys(tmp_path / "missing", [])
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("::1") and not auth.is_loopback("0.0.0.0")
