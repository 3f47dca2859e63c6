//! lineage-guard's Avro body reader: a micro-batch of message bodies, each with its writer
//! schema, into the Arrow buffers of the contract's columns, in the micro-batch's order.
//!
//! Each body is decoded on its own by Apache Avro's Rust implementation (`apache-avro`), so a
//! bad body is isolated to its own row: it gets status `FAILED` and the Python side re-reads
//! it with fastavro for its reason. A body that decodes but holds a shape the columns cannot
//! carry exactly (a value of another type, a timestamp before year 1) gets status `OTHER`:
//! the Python side reads that record whole and judges it there. Rows out = bodies in, always.
//!
//! The schema given has no logical types (the Python side strips them): values are read as
//! Avro stores them, which is what the guard's lenient reading keeps for the contract's
//! fields (`generated_at` as epoch milliseconds).

mod hashes;

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};

use apache_avro::headers::HeaderBuilder;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, Schema};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

const OK: u8 = 0;
const FAILED: u8 = 1;
const OTHER: u8 = 2;
/// A row's reader index when it is not to be read.
const NOT_READ: u8 = 255;

/// 0001-01-01T00:00:00Z in epoch milliseconds: no earlier instant is a timestamp here.
const EARLIEST_MILLIS: i64 = -62_135_596_800_000;

/// The string columns, in the order they are returned.
const TEXT_COLUMNS: usize = 9;
const RECORD_ID: usize = 0;
const TENANT_ID: usize = 1;
const CONTENT_CLASS: usize = 2;
const ORIGIN_ENV: usize = 3;
const SOURCE_SYSTEM: usize = 4;
const GENERATOR_NAME: usize = 5;
const PARAMETERS_SHA256: usize = 6;
const DISCLOSURE: usize = 7;
const DIGITAL_SOURCE_TYPE: usize = 8;

/// The most bytes a string or bytes value, and the most items an array block, may declare
/// (`apache_avro::util::max_allocation_bytes`, set when the module loads). apache-avro
/// allocates what a length declares before it reads a byte of it (an array's count times
/// the size of a value), so a 30-byte body declaring a 500 MB string or half a billion
/// items made the process allocate that, or abort. Past this bound the body does not
/// decode here, and fastavro (which reads what is there) reads it instead: a value this
/// large only costs speed, never a verdict.
const MAX_DECLARED: usize = 1 << 16;

/// The readers of the schemas seen so far, by their JSON: parsing and resolving one costs
/// ~50 µs, once per process instead of once per call.
fn reader_of(json: &str) -> PyResult<Arc<GenericSingleObjectReader>> {
    static READERS: OnceLock<Mutex<HashMap<String, Arc<GenericSingleObjectReader>>>> =
        OnceLock::new();
    let mut readers = READERS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| PyValueError::new_err("the readers' cache is poisoned"))?;
    if let Some(reader) = readers.get(json) {
        return Ok(Arc::clone(reader));
    }
    let schema = Schema::parse_str(json)
        .map_err(|e| PyValueError::new_err(format!("schema does not parse: {e}")))?;
    let reader = GenericSingleObjectReader::new_with_header_builder(schema, NoHeader)
        .map_err(|e| PyValueError::new_err(format!("schema does not resolve: {e}")))?;
    let reader = Arc::new(reader);
    readers.insert(json.to_owned(), Arc::clone(&reader));
    Ok(reader)
}

/// Bodies come without a header (the Python side skips single-object framing): the reader
/// resolves the schema's names once, then reads each body with no header to check.
struct NoHeader;

impl HeaderBuilder for NoHeader {
    fn build_header(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// One body to read. apache-avro reads a value cut short by the end of its input leniently
/// (a string or bytes as null, a missing union as its first branch): any read that found
/// fewer bytes than it asked for marks the body `short`, and a short body does not decode.
struct Body<'a> {
    data: &'a [u8],
    at: usize,
    short: bool,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        if n < buf.len() {
            self.short = true;
        }
        Ok(n)
    }
}

/// An Arrow string column being built: 32-bit offsets, UTF-8 data, a validity bitmap.
struct Strings {
    offsets: Vec<i32>,
    data: Vec<u8>,
    valid: Vec<bool>,
}

impl Strings {
    fn new(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Strings {
            offsets,
            data: Vec::new(),
            valid: Vec::with_capacity(rows),
        }
    }

    fn push(&mut self, value: Option<&str>) -> Result<(), ()> {
        if let Some(text) = value {
            self.data.extend_from_slice(text.as_bytes());
        }
        let end = i32::try_from(self.data.len()).map_err(|_| ())?;
        self.offsets.push(end);
        self.valid.push(value.is_some());
        Ok(())
    }

    fn to_python<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let offsets: Vec<u8> = self.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        let nulls = self.valid.iter().filter(|v| !**v).count();
        PyTuple::new(
            py,
            [
                PyBytes::new(py, &offsets).into_any(),
                PyBytes::new(py, &self.data).into_any(),
                PyBytes::new(py, &bitmap(&self.valid)).into_any(),
                nulls.into_pyobject(py)?.into_any(),
            ],
        )
    }
}

fn bitmap(valid: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; valid.len().div_ceil(8)];
    for (i, v) in valid.iter().enumerate() {
        if *v {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    bits
}

/// One row's contract values, borrowed from the decoded record.
#[derive(Default)]
struct Row<'a> {
    texts: [Option<&'a str>; TEXT_COLUMNS],
    provenance_present: bool,
    generated_at: Option<i64>,
    parents: Option<Vec<&'a str>>,
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| unwrap_union(v))
}

fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => unwrap_union(inner),
        other => other,
    }
}

/// A text field as the guard reads it: a string or an enum's symbol; absent or null is None.
/// Anything else is `Err`: the record is read by the Python side.
fn text(value: Option<&Value>) -> Result<Option<&str>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(Value::Enum(_, symbol)) => Ok(Some(symbol.as_str())),
        Some(_) => Err(()),
    }
}

fn row_of(record: &Value) -> Result<Row<'_>, ()> {
    let Value::Record(fields) = record else {
        return Err(());
    };
    let mut row = Row::default();
    row.texts[RECORD_ID] = text(field(fields, "record_id"))?;
    row.texts[TENANT_ID] = text(field(fields, "tenant_id"))?;
    let provenance = match field(fields, "provenance") {
        None | Some(Value::Null) => return Ok(row),
        Some(Value::Record(p)) => p,
        Some(_) => return Err(()),
    };
    row.provenance_present = true;
    row.texts[CONTENT_CLASS] = text(field(provenance, "content_class"))?;
    row.texts[ORIGIN_ENV] = text(field(provenance, "origin_env"))?;
    row.texts[SOURCE_SYSTEM] = text(field(provenance, "source_system"))?;
    row.texts[DISCLOSURE] = text(field(provenance, "disclosure"))?;
    // Absent from bodies written before the field existed (an earlier writer schema): null.
    row.texts[DIGITAL_SOURCE_TYPE] = text(field(provenance, "digital_source_type"))?;
    match field(provenance, "generator") {
        None | Some(Value::Null) => {}
        Some(Value::Record(g)) => {
            row.texts[GENERATOR_NAME] = text(field(g, "name"))?;
            row.texts[PARAMETERS_SHA256] = text(field(g, "parameters_sha256"))?;
        }
        Some(_) => return Err(()),
    }
    row.generated_at = match field(provenance, "generated_at") {
        None | Some(Value::Null) => None,
        Some(Value::Long(v)) if *v >= EARLIEST_MILLIS => Some(*v),
        Some(Value::Int(v)) => Some(i64::from(*v)),
        Some(_) => return Err(()),
    };
    row.parents = match field(provenance, "parent_record_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut ids = Vec::with_capacity(items.len());
            for item in items {
                match unwrap_union(item) {
                    Value::String(s) => ids.push(s.as_str()),
                    _ => return Err(()),
                }
            }
            Some(ids)
        }
        Some(_) => return Err(()),
    };
    Ok(row)
}

/// Reads `bodies[i] = data[offsets[i] + skips[i] .. offsets[i + 1]]` (`offsets`: n + 1
/// little-endian int32, an Arrow binary column's) with `schemas[readers[i]]`, in one pass over
/// the micro-batch: rows come out in the order they came in. A row whose `readers[i]` is
/// `NOT_READ` (255) is not read: status 1, as a body that does not decode.
///
/// Returns `(status, texts, provenance_present, generated_at, parents)`: `status` one byte per
/// row (0 read, 1 does not decode, 2 read by the Python side); `texts` nine string columns
/// (record_id, tenant_id, content_class, origin_env, source_system, generator_name,
/// parameters_sha256, disclosure, digital_source_type) as `(offsets, data, validity bitmap, null count)`;
/// `provenance_present` one byte per row; `generated_at` as `(int64 values, validity bitmap,
/// null count)`; `parents` as `(list offsets, validity bitmap, null count, child string column)`.
/// Rows that are not read (status 1 or 2) are null in every column.
#[pyfunction]
fn read_contract<'py>(
    py: Python<'py>,
    schemas: Vec<String>,
    data: &[u8],
    offsets: &[u8],
    readers: &[u8],
    skips: &[u8],
) -> PyResult<Bound<'py, PyTuple>> {
    if schemas.len() >= usize::from(NOT_READ) {
        return Err(PyValueError::new_err(
            "at most 254 writer schemas per micro-batch",
        ));
    }
    let parsed = schemas
        .iter()
        .map(|json| reader_of(json))
        .collect::<PyResult<Vec<_>>>()?;
    let bounds = hashes::bounds_of(offsets, data.len())?;
    let rows = bounds.len() - 1;
    if readers.len() != rows || skips.len() != rows {
        return Err(PyValueError::new_err(
            "readers and skips must have one byte per body",
        ));
    }
    if readers
        .iter()
        .any(|&r| r != NOT_READ && usize::from(r) >= parsed.len())
    {
        return Err(PyValueError::new_err("a reader index names no schema"));
    }

    let mut status = vec![OK; rows];
    let mut texts: Vec<Strings> = (0..TEXT_COLUMNS).map(|_| Strings::new(rows)).collect();
    let mut present = vec![0u8; rows];
    let mut stamps = vec![0i64; rows];
    let mut stamped = vec![false; rows];
    let mut list_offsets: Vec<i32> = Vec::with_capacity(rows + 1);
    list_offsets.push(0);
    let mut listed = vec![false; rows];
    let mut parent_ids = Strings::new(rows);

    let overflow = || PyValueError::new_err("a micro-batch's text exceeds 2 GiB");
    for i in 0..rows {
        let (start, end) = (bounds[i] + usize::from(skips[i]), bounds[i + 1]);
        let reader = parsed.get(usize::from(readers[i]));
        let decoded = if let (Some(reader), true) = (reader, start <= end) {
            let mut body = Body {
                data: &data[start..end],
                at: 0,
                short: false,
            };
            match reader.read_value(&mut body) {
                Ok(value) if !body.short && body.at == end - start => Some(value),
                _ => None,
            }
        } else {
            None
        };
        let row = match &decoded {
            None => {
                status[i] = FAILED;
                None
            }
            Some(value) => match row_of(value) {
                Ok(row) => Some(row),
                Err(()) => {
                    status[i] = OTHER;
                    None
                }
            },
        };
        let row = row.unwrap_or_default();
        for (column, value) in texts.iter_mut().zip(row.texts.iter()) {
            column.push(*value).map_err(|_| overflow())?;
        }
        present[i] = u8::from(row.provenance_present);
        if let Some(millis) = row.generated_at {
            stamps[i] = millis;
            stamped[i] = true;
        }
        if let Some(ids) = &row.parents {
            listed[i] = true;
            for id in ids {
                parent_ids.push(Some(id)).map_err(|_| overflow())?;
            }
        }
        let count = i32::try_from(parent_ids.valid.len()).map_err(|_| overflow())?;
        list_offsets.push(count);
    }

    let texts_py: Vec<Bound<'py, PyTuple>> = texts
        .iter()
        .map(|t| t.to_python(py))
        .collect::<PyResult<_>>()?;
    let stamp_bytes: Vec<u8> = stamps.iter().flat_map(|v| v.to_le_bytes()).collect();
    let list_bytes: Vec<u8> = list_offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    PyTuple::new(
        py,
        [
            PyBytes::new(py, &status).into_any(),
            PyTuple::new(py, texts_py)?.into_any(),
            PyBytes::new(py, &present).into_any(),
            PyTuple::new(
                py,
                [
                    PyBytes::new(py, &stamp_bytes).into_any(),
                    PyBytes::new(py, &bitmap(&stamped)).into_any(),
                    stamped
                        .iter()
                        .filter(|v| !**v)
                        .count()
                        .into_pyobject(py)?
                        .into_any(),
                ],
            )?
            .into_any(),
            PyTuple::new(
                py,
                [
                    PyBytes::new(py, &list_bytes).into_any(),
                    PyBytes::new(py, &bitmap(&listed)).into_any(),
                    listed
                        .iter()
                        .filter(|v| !**v)
                        .count()
                        .into_pyobject(py)?
                        .into_any(),
                    parent_ids.to_python(py)?.into_any(),
                ],
            )?
            .into_any(),
        ],
    )
}

/// Where each Avro single-object message of `body` ends (a gateway request's body: messages
/// back to back, `C3 01`, an 8-byte fingerprint, then a body as long as its schema reads).
/// `fingerprints[k]` names `schemas[k]`. Returns the ends (u64 little-endian each) of the
/// messages split, and the byte offset where splitting stopped: `body.len()` when every
/// message was split, else the start of the first message this reader could not read to its
/// end (no magic, an unknown fingerprint, a body that does not decode or ends short). The
/// Python side goes on from there with fastavro, for its reason or its reading.
#[pyfunction]
fn single_object_ends<'py>(
    py: Python<'py>,
    schemas: Vec<String>,
    fingerprints: Vec<Vec<u8>>,
    body: &[u8],
) -> PyResult<(Bound<'py, PyBytes>, usize)> {
    if schemas.len() != fingerprints.len() {
        return Err(PyValueError::new_err("one fingerprint per schema"));
    }
    let readers = schemas
        .iter()
        .map(|json| reader_of(json))
        .collect::<PyResult<Vec<_>>>()?;
    let mut ends: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let head = &body[at..body.len().min(at + 10)];
        if head.len() < 10 || head[..2] != [0xC3, 0x01] {
            break;
        }
        let Some(k) = fingerprints.iter().position(|f| f.as_slice() == &head[2..10]) else {
            break;
        };
        let mut rest = Body {
            data: &body[at + 10..],
            at: 0,
            short: false,
        };
        match readers[k].read_value(&mut rest) {
            Ok(_) if !rest.short => {}
            _ => break,
        }
        at += 10 + rest.at;
        ends.extend_from_slice(&(at as u64).to_le_bytes());
    }
    Ok((PyBytes::new(py, &ends), at))
}

#[pymodule]
fn _avro(m: &Bound<'_, PyModule>) -> PyResult<()> {
    apache_avro::util::max_allocation_bytes(MAX_DECLARED);
    m.add_function(wrap_pyfunction!(read_contract, m)?)?;
    m.add_function(wrap_pyfunction!(single_object_ends, m)?)?;
    hashes::register(m)?;
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
