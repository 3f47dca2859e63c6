"""A worker process of the in-process runner, for a bounded run spread over this machine's
cores (`guard.worker_args`): Beam's SDK harness, as `--direct_running_mode=multi_processing`
starts it, with two differences for a command-line tool:

- Ctrl-C is ignored here: the guard (the launcher) gets it too and stops its workers cleanly,
  through `lineage_guard.stop`'s stop file, after the batch in hand.
- Only errors go to stderr. Warnings still reach the guard's log through Beam's logging
  service; the harness's INFO chatter about its own start and end does not.
"""

from __future__ import annotations

import logging
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    errors_only = logging.StreamHandler(sys.stderr)
    errors_only.setLevel(logging.ERROR)
    logging.getLogger().addHandler(errors_only)  # before Beam's `basicConfig`, which then adds none
    # A warning the harness gives every worker the in-process runner starts (it has no
    # staging directory to give them): not the user's concern.
    logging.getLogger("apache_beam.runners.worker.sdk_worker_main").setLevel(logging.ERROR)

    from apache_beam.runners.worker import sdk_worker_main

    from lineage_guard import heap

    heap.settle()
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
