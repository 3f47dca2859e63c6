"""Measures `lineage-guard validate` throughput: records per second through the same streaming
file check the CLI runs (read, flatten, suites per micro-batch), on generated CRM records.

    python bench/validate_throughput.py --records 1000000
    python bench/validate_throughput.py --micro 2000   # the validator alone, µs per record

Writes the records to a temporary Avro file per entity first (not timed), then times the
check. Prints one line per size and, with --json, a JSON document.

`--micro N` times only `SuiteValidator.validate` on one batch of N records decoded from Avro
single-object messages (as the guard gets them), repeated `--repeat` times: median and best.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lineage_guard.cli.check import check_files
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.generate import (
    CONTACT,
    EMAIL_ACTIVITY,
    MEDIA_ASSET,
    Faults,
    faulty_sync_schema,
    generate,
)
from lineage_guard.io.files import write_avro


def measure(records: int, batch_size: int, folder: Path, engine: str) -> dict[str, float]:
    paths = []
    for n, entity in enumerate((CONTACT, EMAIL_ACTIVITY, MEDIA_ASSET)):
        path = folder / f"{entity.rsplit('.', 1)[1]}-{records}.avro"
        generated = generate(
            records // 3, seed=n, entities=(entity,), faults=Faults(stripped=0.05, test_origin=0.02)
        )
        write_avro(path, faulty_sync_schema(entity), (g.record for g in generated))
        paths.append(path)
    validator = SuiteValidator(engine=engine)
    started = time.perf_counter()
    result = check_files(paths, validator, batch_size=batch_size)
    seconds = time.perf_counter() - started
    return {
        "records": result.total,
        "rejected": len(result.rejected),
        "seconds": seconds,
        "records_per_second": result.total / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def micro(size: int, repeat: int, engine: str) -> dict[str, float]:
    from lineage_guard.io.decode import Decoded, Decoder, encode_single_object

    decoder, batch = Decoder(), []
    for g in generate(size, seed=7, faults=Faults(stripped=0.05, test_origin=0.02)):
        record = g.record
        if record["provenance"] is None:  # the contract schema cannot carry a null
            record["provenance"] = {
                "content_class": "SYNTHETIC",
                "origin_env": "PRODUCTION",
                "source_system": "crm-sync",
                "generator": None,
                "generated_at": None,
                "disclosure": None,
                "parent_record_ids": [],
            }
        decoded = decoder.decode(encode_single_object(record, g.schema))
        assert isinstance(decoded, Decoded)
        batch.append(decoded.record)
    validator = SuiteValidator(engine=engine)
    validator.validate(batch)  # warm-up: first-use compilation, imports
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        validator.validate(batch)
        times.append(time.perf_counter() - started)
    return {
        "records": size,
        "median_us_per_record": statistics.median(times) * 1e6 / size,
        "best_us_per_record": min(times) * 1e6 / size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[6000, 1_000_000])
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--engine", choices=["compiled", "gx"], default="compiled")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--micro", type=int, metavar="N", help="time the validator alone")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    if args.micro:
        row = micro(args.micro, args.repeat, args.engine)
        print(
            f"{args.engine:>8}  validate({row['records']:.0f} records): median "
            f"{row['median_us_per_record']:.2f} µs/record, best {row['best_us_per_record']:.2f}",
            file=sys.stderr,
        )
        if args.json:
            print(json.dumps(row))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.records:
            row = measure(count, args.batch_size, Path(tmp), args.engine)
            results.append(row)
            print(
                f"{args.engine:>8}  {row['records']:>9} records  {row['rejected']:>7} rejected  "
                f"{row['seconds']:8.2f} s  {row['records_per_second']:>9.0f} records/s  "
                f"peak RSS {row['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
