"""`--flink-rest` names the REST ports of the Flink job server's jobs: one port or a range."""

from __future__ import annotations

import pytest

from lineage_guard.flink_rest import endpoints, live_jobs
from lineage_guard.lineage.errors import ConfigError


def test_a_port_or_a_range() -> None:
    assert endpoints("127.0.0.1:18100") == ["http://127.0.0.1:18100"]
    assert endpoints("127.0.0.1:18100-18102") == [
        "http://127.0.0.1:18100",
        "http://127.0.0.1:18101",
        "http://127.0.0.1:18102",
    ]


@pytest.mark.parametrize("spec", ["18100", "host:", "host:x-y", "host:18102-18100", "h:1-5000"])
def test_anything_else_is_refused_in_one_line(spec: str) -> None:
    with pytest.raises(ConfigError, match=f"`{spec}` is not a Flink REST address: give"):
        endpoints(spec)


def test_no_job_where_nothing_listens() -> None:
    assert live_jobs("127.0.0.1:1-3", "lineage-guard-g") == []
