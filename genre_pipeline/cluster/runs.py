"""Runs on a deployment, through its webserver's GraphQL API (the way the UI launches them): launch a
materialization, which the instance's run queue admits; wait for it and for the retry the daemon launches
when it fails; and read where and how long each step ran."""

from __future__ import annotations

import dataclasses
import time
import urllib.parse

import requests
from dagster_graphql import DagsterGraphQLClient

from genre_pipeline.cluster.local import LOCATION_NAME

ASSET_JOB = "__ASSET_JOB"  # Dagster's implicit job over every asset: the one "Materialize" launches
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

_RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status stepStats { stepKey status startTime endTime } }
    ... on PythonError { message }
    ... on RunNotFoundError { message }
  }
}
"""

_RUNS_WITH_TAG = """
query Runs($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
    __typename
    ... on Runs { results { runId status } }
    ... on PythonError { message }
  }
}
"""

_ASSETS = """
query Assets { assetNodes { assetKey { path } } }
"""

_LOGS = """
query Logs($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor, limit: 1000) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        __typename
        ... on MessageEvent { message stepKey }
        ... on EngineEvent { metadataEntries { label ... on TextMetadataEntry { text } } }
      }
    }
    ... on PythonError { message }
  }
}
"""


class RunError(RuntimeError):
    """The deployment refused or lost a run; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class StepRecord:
    step: str
    status: str
    worker: str | None  # the Celery worker that executed it (None under another executor)
    started: float | None
    ended: float | None

    @property
    def seconds(self) -> float | None:
        return round(self.ended - self.started, 2) if self.started and self.ended else None


class Deployment:
    """A Dagster webserver, e.g. ``http://127.0.0.1:3070`` (the local cluster's)."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.url = url
        self.client = DagsterGraphQLClient(parsed.hostname, port_number=parsed.port, use_https=parsed.scheme == "https")

    def _query(self, query: str, **variables) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RunError(f"{self.url}: {body['errors'][0].get('message')}")
        return body["data"]

    def asset_keys(self) -> list[str]:
        return sorted("/".join(node["assetKey"]["path"]) for node in self._query(_ASSETS)["assetNodes"])

    def launch(
        self,
        assets: list[str],
        *,
        partition_range: tuple[str, str] | None = None,
        run_config: dict | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Queue a run that materializes ``assets`` (over a partition range of the partitioned ones, in one
        run as their single-run backfill policy allows); returns its run id."""
        tags = dict(tags or {})
        if partition_range:
            tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"] = partition_range
        return self.client.submit_job_execution(
            ASSET_JOB,
            repository_location_name=LOCATION_NAME,
            asset_selection=assets,
            run_config=run_config or {},
            tags=tags,
        )

    def run(self, run_id: str) -> dict:
        result = self._query(_RUN, runId=run_id)["runOrError"]
        if result["__typename"] != "Run":
            raise RunError(f"run {run_id}: {result.get('message', result['__typename'])}")
        return result

    def retries_of(self, run_id: str) -> list[dict]:
        result = self._query(_RUNS_WITH_TAG, key="dagster/parent_run_id", value=run_id)["runsOrError"]
        if result["__typename"] != "Runs":
            raise RunError(f"runs retrying {run_id}: {result.get('message', result['__typename'])}")
        return result["results"]

    def wait(self, run_id: str, *, timeout_s: float = 3600.0, retry_grace_s: float = 90.0) -> list[dict]:
        """Wait until the run finishes; a failed run is followed into the retry the daemon launches (within
        ``retry_grace_s``). Returns every run of the chain, the last one deciding the outcome."""
        deadline = time.monotonic() + timeout_s
        chain = [self._finished(run_id, deadline)]
        while chain[-1]["status"] == "FAILURE":
            retry_deadline = min(deadline, time.monotonic() + retry_grace_s)
            retries = self.retries_of(chain[-1]["runId"])
            while not retries and time.monotonic() < retry_deadline:
                time.sleep(2.0)
                retries = self.retries_of(chain[-1]["runId"])
            if not retries:
                break
            chain.append(self._finished(retries[0]["runId"], deadline))
        return chain

    def _finished(self, run_id: str, deadline: float) -> dict:
        while True:
            run = self.run(run_id)
            if run["status"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise RunError(f"run {run_id} still {run['status']} at the deadline ({self.url}/runs/{run_id})")
            time.sleep(2.0)

    def steps(self, run_id: str) -> list[StepRecord]:
        """Each step of the run: its status, the worker that executed it and its wall time."""
        workers, cursor = {}, None
        while True:
            logs = self._query(_LOGS, runId=run_id, cursor=cursor)["logsForRun"]
            if logs["__typename"] != "EventConnection":
                raise RunError(f"logs of run {run_id}: {logs.get('message', logs['__typename'])}")
            for event in logs["events"]:
                entries = {entry["label"]: entry.get("text") for entry in event.get("metadataEntries") or []}
                if event.get("stepKey") and entries.get("Celery worker"):
                    workers[event["stepKey"]] = entries["Celery worker"]
            cursor = logs["cursor"]
            if not logs["hasMore"]:
                break
        records = []
        for stats in self.run(run_id)["stepStats"]:
            records.append(
                StepRecord(
                    step=stats["stepKey"],
                    status=stats["status"],
                    worker=workers.get(stats["stepKey"]),
                    started=stats["startTime"],
                    ended=stats["endTime"],
                )
            )
        return sorted(records, key=lambda record: record.started or float("inf"))
