//! The lineage's per-row hashes, for a whole micro-batch in one call: SHA-256 of each
//! message as received, the record keys of the SQLite store's key levels, and the Merkle
//! root of a batch's leaves. Each equals its Python definition byte for byte (the Python
//! side keeps those as the reference, and `tests/unit/test_native_hashes.py` holds this
//! module to them).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use sha2::{Digest, Sha256};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The n + 1 bounds of an Arrow binary column's values (`offsets`: little-endian int32),
/// checked against its data.
pub(crate) fn bounds_of(offsets: &[u8], data_len: usize) -> PyResult<Vec<usize>> {
    if !offsets.len().is_multiple_of(4) || offsets.len() < 4 {
        return Err(PyValueError::new_err(
            "offsets must be n + 1 little-endian int32",
        ));
    }
    let bounds: Vec<usize> = offsets
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if bounds.windows(2).any(|w| w[0] > w[1]) || bounds[bounds.len() - 1] > data_len {
        return Err(PyValueError::new_err(
            "offsets out of order or past the data",
        ));
    }
    Ok(bounds)
}

/// The SHA-256 of each of the `n` values in `data` delimited by `offsets` (n + 1
/// little-endian int32, as an Arrow binary column's), as n × 64 lowercase hex characters.
#[pyfunction]
fn sha256_hex_each<'py>(
    py: Python<'py>,
    data: &[u8],
    offsets: &[u8],
) -> PyResult<Bound<'py, PyString>> {
    let bounds = bounds_of(offsets, data.len())?;
    let mut out = Vec::with_capacity((bounds.len() - 1) * 64);
    for w in bounds.windows(2) {
        for byte in Sha256::digest(&data[w[0]..w[1]]) {
            out.push(HEX[(byte >> 4) as usize]);
            out.push(HEX[(byte & 15) as usize]);
        }
    }
    // Only hex digits were written: valid UTF-8.
    Ok(PyString::new(
        py,
        std::str::from_utf8(&out).expect("hex is ASCII"),
    ))
}

/// The record key of each of `ids`: the first 8 bytes of its UTF-8's SHA-256 as a
/// big-endian signed 64-bit integer, n × 8 bytes native-endian. An id that is not valid
/// UTF-8 (a lone surrogate) is an error: the Python side keys that batch itself.
#[pyfunction]
fn record_keys<'py>(
    py: Python<'py>,
    ids: Vec<Bound<'py, PyString>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(ids.len() * 8);
    for id in &ids {
        let digest = Sha256::digest(id.to_str()?.as_bytes());
        let key = i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        out.extend_from_slice(&key.to_ne_bytes());
    }
    Ok(PyBytes::new(py, &out))
}

/// The hashed leaves of `leaves`: SHA-256(0x00 ‖ leaf) each.
fn leaf_nodes(leaves: &[Bound<'_, PyBytes>]) -> Vec<[u8; 32]> {
    leaves
        .iter()
        .map(|leaf| {
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update(leaf.as_bytes());
            h.finalize().into()
        })
        .collect()
}

/// The level above `level`: SHA-256(0x01 ‖ left ‖ right) per pair, an odd node carried up.
fn paired(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [left, right] => {
                let mut h = Sha256::new();
                h.update([1u8]);
                h.update(left);
                h.update(right);
                h.finalize().into()
            }
            _ => pair[0],
        })
        .collect()
}

/// RFC 6962's Merkle tree hash (hex) of `leaves`: a leaf's node is SHA-256(0x00 ‖ leaf), a
/// parent's SHA-256(0x01 ‖ left ‖ right), an odd node is carried up unchanged; no leaves:
/// SHA-256 of nothing.
#[pyfunction]
fn merkle_root(leaves: Vec<Bound<'_, PyBytes>>) -> String {
    if leaves.is_empty() {
        return hex(&Sha256::digest(b""));
    }
    let mut level = leaf_nodes(&leaves);
    while level.len() > 1 {
        level = paired(&level);
    }
    hex(&level[0])
}

/// The nodes of `merkle_root`'s tree `height` levels above its leaves (0: the hashed
/// leaves), 32 bytes each, one after the other.
#[pyfunction]
fn merkle_nodes<'py>(
    py: Python<'py>,
    leaves: Vec<Bound<'py, PyBytes>>,
    height: usize,
) -> Bound<'py, PyBytes> {
    let mut level = leaf_nodes(&leaves);
    for _ in 0..height {
        level = paired(&level);
    }
    PyBytes::new(py, &level.concat())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| {
            [
                HEX[(b >> 4) as usize] as char,
                HEX[(b & 15) as usize] as char,
            ]
        })
        .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sha256_hex_each, m)?)?;
    m.add_function(wrap_pyfunction!(record_keys, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_root, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_nodes, m)?)?;
    Ok(())
}
