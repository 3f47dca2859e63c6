"""The Rust Avro body reader (`native/`): see `lineage_guard.io.arrow_decode`."""

def read_contract(
    schema_json: str, data: bytes, offsets: bytes, skip: int
) -> tuple[
    bytes,
    tuple[tuple[bytes, bytes, bytes, int], ...],
    bytes,
    tuple[bytes, bytes, int],
    tuple[bytes, bytes, int, tuple[bytes, bytes, bytes, int]],
]: ...
