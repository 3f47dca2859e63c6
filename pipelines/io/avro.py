"""Reading Avro values that are legal Avro but do not fit Python's types.

Avro's `timestamp-millis` is any 64-bit long: year 10000 or 292 million years BC are legal
values (Java and avro-tools read them back), but Python's `datetime` stops at years 1 and
9999, and fastavro's conversion raises `OverflowError` for them, which would end the reading of
a whole file or message. Likewise a `uuid` string that is no UUID, a `date` past year 9999.

`lenient(schema)` returns a copy of a writer schema whose logical types are renamed to
*lenient* custom logical types (fastavro's documented extension point, `LOGICAL_READERS`):
each calls fastavro's own conversion and, where that fails, keeps the value as Avro stored
it (epoch millis, days, the string). The record then reaches the contract with its raw value,
and the contract judges it: a `generated_at` in year 10000 is `generated_at_in_future`, one
before year 1 is `wrong_type`; the rest of the file or topic is read as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import fastavro
from fastavro.read import LOGICAL_READERS

PREFIX = "lineage-guard-lenient."
_PARSE_MARKERS = ("__fastavro_parsed", "__named_schemas")

Converter = Callable[[Any, Any, Any], Any]


def _lenient_reader(convert: Converter) -> Converter:
    def read(data: Any, writer_schema: Any, reader_schema: Any) -> Any:
        try:
            return convert(data, writer_schema, reader_schema)
        except (OverflowError, ValueError, ArithmeticError, TypeError):
            return data  # legal Avro that Python cannot represent: the raw value

    return read


@cache
def _register() -> frozenset[str]:
    """Registers a lenient twin of each of fastavro's built-in logical readers, once.

    fastavro looks a logical type up as `{avro type}-{logicalType}`; the twin's key is
    `{avro type}-lineage-guard-lenient.{logicalType}`. Returns the logical type names covered.
    """
    names = set()
    for key, convert in list(LOGICAL_READERS.items()):
        if PREFIX in key:
            continue
        avro_type, _, logical = key.partition("-")
        LOGICAL_READERS[f"{avro_type}-{PREFIX}{logical}"] = _lenient_reader(convert)
        names.add(logical)
    return frozenset(names)


def _rename(node: Any, covered: frozenset[str]) -> Any:
    if isinstance(node, list):
        return [_rename(n, covered) for n in node]
    if not isinstance(node, dict):
        return node
    copy = {k: _rename(v, covered) for k, v in node.items() if k not in _PARSE_MARKERS}
    logical = copy.get("logicalType")
    if isinstance(logical, str) and logical in covered:
        copy["logicalType"] = PREFIX + logical
    return copy


def lenient_json(schema: Any) -> Any:
    """The schema (JSON form, parsed or not) with its logical types made lenient; unparsed."""
    return _rename(schema, _register())


def lenient(schema: Any, named_schemas: dict[str, Any] | None = None) -> Any:
    """The writer schema, parsed, with lenient logical types (see the module docstring)."""
    return fastavro.parse_schema(lenient_json(schema), named_schemas=named_schemas)
