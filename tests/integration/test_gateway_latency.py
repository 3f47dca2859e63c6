"""What the gateway's latency rests on, on real stores (SQLite, PostgreSQL): a request's reads
never wait behind a commit, and the admits that arrive while one commits share the next."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from lineage_guard.generate import generate
from lineage_guard.io.file_io import json_line
from lineage_guard.lineage.hops import Delivery
from lineage_guard.lineage.store import open_store
from lineage_guard.web.gateway import GatewaySettings
from tests.integration.pg_waits import server_waits
from tests.integration.test_gateway import gateway

JSON = {"Content-Type": "application/json"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/gateway.db"
    else:
        yield request.getfixturevalue("pg_store_url")


def _child() -> dict[str, Any]:
    """A record with parents: judging it reads their classes from the store."""
    return next(
        g.record for g in generate(50, seed=5) if g.record["provenance"]["parent_record_ids"]
    )


def test_reads_do_not_wait_behind_a_commit(store_url: str) -> None:
    """While the writer is inside a transaction (as during a commit's fsync), `check` (the API
    key and the parents' classes read from the store) and `/readyz` answer; an admit sent
    then waits for the writer, and is recorded once it goes on."""
    record = _child()
    body = json_line(record).encode()
    with gateway(GatewaySettings(lineage_store=store_url)) as (served, headers):
        held = served.gateway.store()._write()  # type: ignore[attr-defined]
        held.__enter__()
        admitted: list[requests.Response] = []
        admit = threading.Thread(
            target=lambda: admitted.append(
                requests.post(
                    f"{served.url}/v1/records:admit",
                    data=body,
                    headers={**headers, **JSON},
                    timeout=30,
                )
            )
        )
        try:
            checked = requests.post(
                f"{served.url}/v1/records:check", data=body, headers={**headers, **JSON}, timeout=5
            )
            ready = requests.get(f"{served.url}/readyz", headers=headers, timeout=5)
            assert (checked.status_code, ready.status_code) == (200, 200)
            assert checked.json()["records"][0]["record_id"] == record["record_id"]
            admit.start()
            admit.join(1.0)
            assert admitted == []  # lineage first: no answer while the writer is held
        finally:
            held.__exit__(None, None, None)
        admit.join(30)
        assert admitted[0].status_code == 200, admitted[0].text
        [verdict] = admitted[0].json()["records"]
    with open_store(store_url) as store:
        [hop] = store.hops([record["record_id"]])  # type: ignore[attr-defined]
    assert f"{hop.chain_id}#{hop.seq}/{hop.index}" == verdict["hop_id"]
    assert hop.delivery is Delivery.CONFIRMED


def test_admits_arriving_during_a_commit_share_the_next(tmp_path: Path) -> None:
    """Ten admits sent while a commit runs: the ones that got there first commit (the
    commits' thread takes what waits when it wakes: one request, at times two), the others
    wait meanwhile and go together in one transaction (one fsync for all of them)."""
    body = json_line(_child()).encode()
    with gateway(GatewaySettings(lineage_store=f"sqlite:///{tmp_path}/g.db")) as (served, headers):
        writer = served.gateway.store()
        groups: list[int] = []
        admit = writer.admit  # type: ignore[attr-defined]

        def counted(admissions: list[Any], *, at: Any) -> Any:
            groups.append(len(admissions))
            return admit(admissions, at=at)

        writer.admit = counted  # type: ignore[attr-defined]  # the real store, counted
        answers: list[int] = []

        def client() -> None:
            sent = requests.post(
                f"{served.url}/v1/records:admit", data=body, headers={**headers, **JSON}, timeout=30
            )
            answers.append(sent.status_code)

        held = writer._write()  # type: ignore[attr-defined]
        held.__enter__()
        clients = [threading.Thread(target=client) for _ in range(10)]
        try:
            for c in clients:
                c.start()
            deadline = time.monotonic() + 20
            waiting = served.gateway._committer._waiting
            while len(groups) != 1 or groups[0] + len(waiting) < 10:
                assert time.monotonic() < deadline, (groups, served.gateway._committer._waiting)
                time.sleep(0.01)
        finally:
            held.__exit__(None, None, None)
        for c in clients:
            c.join(30)
    assert answers == [200] * 10
    assert len(groups) == 2 and sum(groups) == 10 and groups[1] >= 5, groups


def test_an_admit_without_idempotency_key_waits_for_postgresql_once(
    pg_store_url: str, tmp_path: Path
) -> None:
    """A single-record admit's transaction on PostgreSQL waits for the server once, for its
    commit: the chain's head is the one the gateway's last commit left (checked, not read),
    and a request without an `Idempotency-Key` has a run id never used before, so its hops
    are not looked for first. With a key (a retry may find its hops), the lookup is a second
    wait. Before: 6 waits either way (BEGIN, head, lookup, the entry's id, the pipeline's end,
    COMMIT)."""
    body = json_line(_child()).encode()
    with gateway(GatewaySettings(lineage_store=pg_store_url)) as (served, headers):
        url = f"{served.url}/v1/records:admit"
        first = requests.post(
            url, data=body, headers={**headers, **JSON, "Idempotency-Key": "key-0"}, timeout=30
        )
        assert first.status_code == 200, first.text  # the first (the answers' table): not counted
        conn = served.gateway.store()._connection()  # type: ignore[attr-defined]
        counted = []
        for n, key in enumerate([None, "key-1"]):
            sent = {**headers, **JSON, **({"Idempotency-Key": key} if key else {})}
            with server_waits(conn, tmp_path / f"libpq-{n}.trace") as waits:
                answer = requests.post(url, data=body, headers=sent, timeout=30)
            assert answer.status_code == 200, answer.text
            counted.append(waits[0])
    assert counted == [1, 2]
    with open_store(pg_store_url) as store:
        hops = store.hops([_child()["record_id"]])  # type: ignore[attr-defined]
    assert [h.delivery for h in hops] == [Delivery.CONFIRMED] * 3
    assert store.verify().ok  # type: ignore[attr-defined]
