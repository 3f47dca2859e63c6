"""The jobs Flink itself runs, through its REST API: what a restarted endless guard cancels.

Beam's Flink job server (2.62) cannot be trusted with a job whose launcher was killed: its
`Cancel` only interrupts the thread that waits for the job (a job that still runs keeps
running, reported CANCELLED), and a job that ended after its launcher died stays RUNNING in its
list for good (its end is lost when it tells the dead launcher's message stream). Flink's REST
API answers for the job itself. With `[local]` (`infra/flink/flink.sh`) each job runs in a
Flink mini cluster of its own, whose REST endpoint takes the first free port of a range
(`rest.bind-port`, `FLINK_REST_PORTS`) and closes with the job: `HOST:FIRST-LAST` names them.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)

ENDED = {"FINISHED", "CANCELED", "FAILED", "SUSPENDED"}  # Flink's terminal job states


def endpoints(spec: str) -> list[str]:
    """`HOST:PORT` or `HOST:FIRST-LAST` as REST base URLs."""
    host, _, ports = spec.rpartition(":")
    first, _, last = ports.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        low = high = -1
    if not host or not 0 < low <= high < 65536 or high - low > 1000:
        raise ConfigError(
            f"`{spec}` is not a Flink REST address: give HOST:PORT or HOST:FIRST-LAST "
            "(infra/flink/flink.sh: 127.0.0.1:18100-18119)."
        )
    return [f"http://{host}:{port}" for port in range(low, high + 1)]


def live_jobs(spec: str, name: str, timeout_s: float = 5.0) -> list[tuple[str, str]]:
    """(REST base URL, Flink job id) of every job named `name` that has not ended."""
    found = []
    for base in endpoints(spec):
        answer = _call("GET", f"{base}/jobs/overview", timeout_s)
        if answer is None:
            continue  # nothing listens there: no job (or not a mini cluster of ours)
        for job in answer.get("jobs", []):
            if job.get("name") == name and job.get("state") not in ENDED:
                found.append((base, str(job["jid"])))
    return found


def cancel_jobs(spec: str, name: str, timeout_s: float = 60.0) -> list[str]:
    """Cancels every job named `name` Flink still runs at `spec` and waits until they ended;
    returns their ids. Raises `ServiceUnavailableError` if one outlives `timeout_s`."""
    jobs = live_jobs(spec, name)
    for base, jid in jobs:
        log.warning(
            "cancelling Flink job `%s` (%s) that a stopped guard of this group left", jid, base
        )
        _call("PATCH", f"{base}/jobs/{jid}?mode=cancel", timeout_s)
    deadline = time.monotonic() + timeout_s
    while left := [jid for _, jid in live_jobs(spec, name) if jid in {j for _, j in jobs}]:
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(
                f"Flink still runs the job(s) {', '.join(f'`{j}`' for j in left)} a stopped guard "
                f"of this group left, {timeout_s:.0f} s after they were cancelled: end them on "
                f"Flink (REST `{spec}`), then start the guard again."
            )
        time.sleep(0.5)
    return [jid for _, jid in jobs]


def _call(method: str, url: str, timeout_s: float) -> Any:
    """The JSON answer, or None when nothing answers at that address. A mini cluster that is
    starting or stopping answers 503 for a moment: asked again until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                body = response.read()
            return json.loads(body) if body else {}
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None  # the job (and its mini cluster) ended meanwhile
            if exc.code != 503 or time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"Flink's REST API at `{url}` answered {exc.code}."
                ) from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        time.sleep(0.2)
