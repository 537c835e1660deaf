//! The request-log hot path in native code: messages of JSON lines in, column buffers out.
//!
//! `scan` reads every line of every message of a fetched batch and decodes the lines it can
//! vouch for: a flat JSON object, printable ASCII only (no escapes), strict JSON grammar, with
//! `namespace`, `rollouts-pod-template-hash`, `pod` (non-empty strings), `status` (an integer
//! 100..599), `ts` and `duration_ms` (numbers) each present exactly once. Such a line is SIMPLE;
//! anything else is OTHER and left to the exact line decoder in Python (`streams.events`), which
//! decodes it or says why not. Blank lines are skipped. Numbers are correctly rounded (Rust's
//! `f64` parsing), as orjson reads them.
//!
//! `KeyIndex` maps packed (namespace, pod hash) keys to attribution codes.
//!
//! Pure: no I/O, no clock. The GIL is released while lines are scanned.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyTuple};
use rustc_hash::FxHasher;

pub const SIMPLE: u8 = 0;
pub const OTHER: u8 = 2;

/// Per message: fine, refused as too big, or holding no line at all.
pub const MESSAGE_OK: u8 = 0;
pub const MESSAGE_OVERSIZED: u8 = 1;
pub const MESSAGE_EMPTY: u8 = 2;

pub const NAMESPACE_WIDTH: usize = 64; // namespaces up to 63 bytes (Kubernetes allows 63)
pub const HASH_WIDTH: usize = 32; // pod-template hashes up to 31 bytes
pub const KEY_WIDTH: usize = NAMESPACE_WIDTH + HASH_WIDTH;
/// Longer number tokens are left to the line decoder (orjson reads huge integers its own way).
const MAX_NUMBER_LEN: usize = 32;

/// The values of one SIMPLE line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Simple<'a> {
    pub namespace: &'a [u8],
    pub pod_hash: &'a [u8],
    pub status: i64,
    pub duration_ms: f64,
    pub ts: f64,
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// What Python's `bytes.strip()` removes: a line of only these holds no request.
fn is_blank(line: &[u8]) -> bool {
    line.iter()
        .all(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c))
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
    clean: bool, // no odd byte anywhere in the line: strings need no byte check
}

/// A byte no simple line has inside a string: control, non-ASCII, or a backslash (an escape).
/// Branch-free, so that the compiler vectorises it.
fn has_odd_byte(text: &[u8]) -> bool {
    text.iter().fold(false, |odd, &b| {
        odd | !(0x20..=0x7e).contains(&b) | (b == b'\\')
    })
}

enum Value<'a> {
    Str(&'a [u8]),
    Number(&'a [u8]),
    Literal,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && is_json_ws(self.s[self.i]) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string of printable ASCII without escapes; the cursor is on its opening quote.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let len = memchr::memchr(b'"', &self.s[start..])?;
        let text = &self.s[start..start + len];
        if !self.clean && has_odd_byte(text) {
            return None;
        }
        self.i = start + len + 1;
        Some(text)
    }

    /// A number in strict JSON grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        self.eat(b'-');
        match self.s.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.digits1()?;
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits1()?;
        }
        Some(&self.s[start..self.i])
    }

    fn digits(&mut self) {
        while matches!(self.s.get(self.i), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match *self.s.get(self.i)? {
            b'"' => self.string().map(Value::Str),
            b't' => self.literal(b"true").map(|_| Value::Literal),
            b'f' => self.literal(b"false").map(|_| Value::Literal),
            b'n' => self.literal(b"null").map(|_| Value::Literal),
            _ => self.number().map(Value::Number),
        }
    }
}

fn non_empty(v: Value<'_>) -> Option<&[u8]> {
    match v {
        Value::Str(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn finite_number(v: Value<'_>) -> Option<f64> {
    let Value::Number(text) = v else { return None };
    if text.len() > MAX_NUMBER_LEN {
        return None;
    }
    // The token is plain ASCII in JSON grammar, which Rust's parser accepts as it is.
    let x: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    // An integer token is an int to orjson: "-0" is 0, and float(0) is +0.0.
    let integer = !text.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
    let x = if integer && x == 0.0 { 0.0 } else { x };
    x.is_finite().then_some(x)
}

/// An integer 100..599 written as three digits, as the line decoder would take it.
fn http_status(v: Value<'_>) -> Option<i64> {
    match v {
        Value::Number(&[a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9']) => {
            Some(i64::from(a - b'0') * 100 + i64::from(b - b'0') * 10 + i64::from(c - b'0'))
        }
        _ => None,
    }
}

/// Decode one line in the canonical flat form, or None when the line decoder must look at it.
pub fn parse_simple(line: &[u8]) -> Option<Simple<'_>> {
    let mut c = Cursor {
        s: line,
        i: 0,
        clean: !has_odd_byte(line),
    };
    let (mut namespace, mut pod_hash, mut pod) = (None, None, None);
    let (mut status, mut duration_ms, mut ts) = (None, None, None);
    c.ws();
    c.eat(b'{')?;
    loop {
        c.ws();
        let key = c.string()?;
        c.ws();
        c.eat(b':')?;
        c.ws();
        let value = c.value()?;
        // A required key twice is left to the line decoder, which keeps the last one.
        match key {
            b"namespace" if namespace.is_none() => namespace = Some(non_empty(value)?),
            b"rollouts-pod-template-hash" if pod_hash.is_none() => {
                pod_hash = Some(non_empty(value)?)
            }
            b"pod" if pod.is_none() => pod = Some(non_empty(value)?),
            b"status" if status.is_none() => status = Some(http_status(value)?),
            b"duration_ms" if duration_ms.is_none() => duration_ms = Some(finite_number(value)?),
            b"ts" if ts.is_none() => ts = Some(finite_number(value)?),
            b"namespace"
            | b"rollouts-pod-template-hash"
            | b"pod"
            | b"status"
            | b"duration_ms"
            | b"ts" => return None,
            _ => {}
        }
        c.ws();
        if c.eat(b',').is_some() {
            continue;
        }
        c.eat(b'}')?;
        break;
    }
    c.ws();
    if c.i != line.len() {
        return None;
    }
    let (namespace, pod_hash) = (namespace?, pod_hash?);
    pod?;
    if namespace.len() >= NAMESPACE_WIDTH || pod_hash.len() >= HASH_WIDTH {
        return None; // does not fit a packed key: the line decoder keeps the strings
    }
    Some(Simple {
        namespace,
        pod_hash,
        status: status?,
        duration_ms: duration_ms?,
        ts: ts?,
    })
}

/// Column buffers for the non-blank lines of a batch, little-endian, in line order.
///
/// Every line has a kind and its place (message, start, end); only SIMPLE lines have values
/// (keys, status, duration, ts: the n-th SIMPLE line's are the n-th of each). An OTHER line
/// costs 25 bytes here, not 145: the exact decoder reads it from its place, and a megabyte
/// of short lines it may refuse (`{}`) must not cost ~50 MB of columns first.
#[derive(Default)]
pub struct Scanned {
    pub message: Vec<u8>,          // i64: index of the line's message
    pub start: Vec<u8>,            // i64: offset of the line in its message
    pub end: Vec<u8>,              // i64
    pub kind: Vec<u8>,             // SIMPLE or OTHER
    pub keys: Vec<u8>,             // SIMPLE lines: KEY_WIDTH bytes, namespace then hash, NUL-padded
    pub status: Vec<u8>,           // SIMPLE lines: i64
    pub duration: Vec<u8>,         // SIMPLE lines: f64
    pub ts: Vec<u8>,               // SIMPLE lines: f64
    pub message_state: Vec<u8>,    // per message: MESSAGE_OK, MESSAGE_OVERSIZED or MESSAGE_EMPTY
    pub not_json_skipped: Vec<u8>, // i64 per message: `not_json` lines past the bad-line limit
}

/// The bytes a JSON text can start with (`streams.requestlog._JSON_START`).
fn starts_like_json(line: &[u8]) -> bool {
    // As the Python decoder looks: the first 64 bytes, leading " \t\r" stripped.
    let head = &line[..line.len().min(64)];
    match head.iter().find(|&&b| !matches!(b, b' ' | b'\t' | b'\r')) {
        None => true, // undecided here: the exact decoder says why
        Some(&b) => matches!(
            b,
            b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
        ),
    }
}

impl Scanned {
    fn push(&mut self, message: usize, start: usize, end: usize, line: Option<Simple<'_>>) {
        self.message
            .extend_from_slice(&(message as i64).to_le_bytes());
        self.start.extend_from_slice(&(start as i64).to_le_bytes());
        self.end.extend_from_slice(&(end as i64).to_le_bytes());
        match line {
            Some(x) => {
                self.kind.push(SIMPLE);
                let at = self.keys.len();
                self.keys.resize(at + KEY_WIDTH, 0);
                self.keys[at..at + x.namespace.len()].copy_from_slice(x.namespace);
                let h = at + NAMESPACE_WIDTH;
                self.keys[h..h + x.pod_hash.len()].copy_from_slice(x.pod_hash);
                self.status.extend_from_slice(&x.status.to_le_bytes());
                self.duration
                    .extend_from_slice(&x.duration_ms.to_le_bytes());
                self.ts.extend_from_slice(&x.ts.to_le_bytes());
            }
            None => self.kind.push(OTHER),
        }
    }
}

/// Scan every message: lines are separated by b"\n", as the line decoder splits them.
///
/// A message's lines that cannot be JSON at all (`starts_like_json`), past the first
/// `max_bad_lines` of them, get no row: they are only counted, per message, in
/// `not_json_skipped`. The decoder tallies such lines without looking at them anyway, and a
/// 1 MB message of two-byte lines would otherwise cost ~150 bytes of columns per line.
pub fn scan_messages(
    messages: &[&[u8]],
    max_message_bytes: usize,
    max_line_bytes: usize,
    max_bad_lines: usize,
) -> Scanned {
    let total: usize = messages.iter().map(|m| m.len()).sum();
    let guess = messages.len().max(total / 128);
    let mut out = Scanned {
        message: Vec::with_capacity(guess * 8),
        start: Vec::with_capacity(guess * 8),
        end: Vec::with_capacity(guess * 8),
        kind: Vec::with_capacity(guess),
        keys: Vec::with_capacity(guess * KEY_WIDTH),
        status: Vec::with_capacity(guess * 8),
        duration: Vec::with_capacity(guess * 8),
        ts: Vec::with_capacity(guess * 8),
        message_state: Vec::with_capacity(messages.len()),
        not_json_skipped: Vec::with_capacity(messages.len() * 8),
    };
    for (index, message) in messages.iter().enumerate() {
        if message.len() > max_message_bytes {
            out.message_state.push(MESSAGE_OVERSIZED);
            out.not_json_skipped.extend_from_slice(&0i64.to_le_bytes());
            continue;
        }
        let mut lines = 0usize;
        let mut not_json = 0usize;
        let mut start = 0usize;
        for end in memchr::memchr_iter(b'\n', message).chain(std::iter::once(message.len())) {
            let line = &message[start..end];
            if !is_blank(line) {
                let simple = if line.len() <= max_line_bytes {
                    parse_simple(line)
                } else {
                    None
                };
                lines += 1;
                if simple.is_none() && !starts_like_json(line) {
                    not_json += 1;
                    if not_json > max_bad_lines {
                        start = end + 1;
                        continue;
                    }
                }
                out.push(index, start, end, simple);
            }
            start = end + 1;
        }
        out.message_state.push(if lines == 0 {
            MESSAGE_EMPTY
        } else {
            MESSAGE_OK
        });
        let skipped = not_json.saturating_sub(max_bad_lines) as i64;
        out.not_json_skipped
            .extend_from_slice(&skipped.to_le_bytes());
    }
    out
}

/// Scan a batch of messages; returns the column buffers of `Scanned`, in its field order.
#[pyfunction]
#[pyo3(name = "scan")]
fn py_scan<'py>(
    py: Python<'py>,
    messages: Vec<Bound<'py, PyBytes>>,
    max_message_bytes: usize,
    max_line_bytes: usize,
    max_bad_lines: usize,
) -> PyResult<Bound<'py, PyTuple>> {
    let slices: Vec<&[u8]> = messages.iter().map(|m| m.as_bytes()).collect();
    let s = py.detach(|| scan_messages(&slices, max_message_bytes, max_line_bytes, max_bad_lines));
    PyTuple::new(
        py,
        [
            &s.message,
            &s.start,
            &s.end,
            &s.kind,
            &s.keys,
            &s.status,
            &s.duration,
            &s.ts,
            &s.message_state,
            &s.not_json_skipped,
        ]
        .map(|v| PyBytes::new(py, v)),
    )
}

type Key = [u8; KEY_WIDTH];

/// Packed (namespace, pod hash) keys to codes; `lookup` answers -1 for an unknown key.
#[pyclass(frozen)]
struct KeyIndex {
    codes: HashMap<Key, i64, BuildHasherDefault<FxHasher>>,
}

fn contiguous_bytes<'b>(buffer: &'b PyBuffer<u8>, what: &str) -> PyResult<&'b [u8]> {
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be C-contiguous"
        )));
    }
    // SAFETY: a C-contiguous buffer of len_bytes bytes, alive while `buffer` is held.
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) })
}

#[pymethods]
impl KeyIndex {
    /// `keys`: n packed keys of KEY_WIDTH bytes each; `codes`: n of them.
    #[new]
    fn new(keys: &[u8], codes: Vec<i64>) -> PyResult<Self> {
        if keys.len() != codes.len() * KEY_WIDTH {
            return Err(PyValueError::new_err(format!(
                "{} key bytes for {} codes: expected {} bytes per key",
                keys.len(),
                codes.len(),
                KEY_WIDTH
            )));
        }
        let mut map = HashMap::with_capacity_and_hasher(codes.len(), Default::default());
        for (key, code) in keys.chunks_exact(KEY_WIDTH).zip(codes) {
            map.insert(Key::try_from(key).expect("chunks are KEY_WIDTH long"), code);
        }
        Ok(KeyIndex { codes: map })
    }

    fn __len__(&self) -> usize {
        self.codes.len()
    }

    /// The code of each packed key (a uint8 buffer of n * KEY_WIDTH bytes), as int64 bytes
    /// in a bytearray: callers may overwrite codes in place.
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let buffer = PyBuffer::<u8>::get(keys)?;
        let raw = contiguous_bytes(&buffer, "keys")?;
        if raw.len() % KEY_WIDTH != 0 {
            return Err(PyValueError::new_err(format!(
                "{} key bytes is not a multiple of {}",
                raw.len(),
                KEY_WIDTH
            )));
        }
        let n = raw.len() / KEY_WIDTH;
        PyByteArray::new_with(py, n * 8, |out| {
            for (key, slot) in raw.chunks_exact(KEY_WIDTH).zip(out.chunks_exact_mut(8)) {
                let key: &Key = key.try_into().expect("chunks are KEY_WIDTH long");
                let code = self.codes.get(key).copied().unwrap_or(-1);
                slot.copy_from_slice(&code.to_le_bytes());
            }
            Ok(())
        })
    }
}

#[pymodule]
fn canarywatch_linescan(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_scan, m)?)?;
    m.add_class::<KeyIndex>()?;
    m.add("SIMPLE", SIMPLE)?;
    m.add("OTHER", OTHER)?;
    m.add("MESSAGE_OK", MESSAGE_OK)?;
    m.add("MESSAGE_OVERSIZED", MESSAGE_OVERSIZED)?;
    m.add("MESSAGE_EMPTY", MESSAGE_EMPTY)?;
    m.add("NAMESPACE_WIDTH", NAMESPACE_WIDTH)?;
    m.add("HASH_WIDTH", HASH_WIDTH)?;
    m.add("KEY_WIDTH", KEY_WIDTH)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANONICAL: &[u8] = br#"{"ts":1764150000.512,"namespace":"shop-prod","pod":"web-6f7d9c8b5d-x2x9k","rollouts-pod-template-hash":"6f7d9c8b5d","status":503,"duration_ms":87.5}"#;

    #[test]
    fn the_canonical_line_is_simple() {
        let x = parse_simple(CANONICAL).expect("simple");
        assert_eq!(x.namespace, b"shop-prod");
        assert_eq!(x.pod_hash, b"6f7d9c8b5d");
        assert_eq!((x.status, x.duration_ms, x.ts), (503, 87.5, 1764150000.512));
        let text = std::str::from_utf8(CANONICAL).unwrap();
        let zero = text.replace("87.5", "-0");
        let x = parse_simple(zero.as_bytes()).expect("simple");
        assert!(
            x.duration_ms == 0.0 && x.duration_ms.is_sign_positive(),
            "orjson reads -0 as int 0"
        );
    }

    #[test]
    fn escapes_duplicates_and_nesting_are_left_to_the_line_decoder() {
        let text = std::str::from_utf8(CANONICAL).unwrap();
        for other in [
            text.replace("shop-prod", "sh\\u006fp"),
            text.replace("503", "503.0"),
            text.replace("87.5", "087.5"),
            text.replace("}", ",}"),
            text.replace("\"status\":503,", "\"status\":503,\"status\":200,"),
            text.replace("}", ",\"labels\":{\"a\":\"b\"}}"),
            text.replace("87.5", "1e400"),
        ] {
            assert_eq!(parse_simple(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn messages_split_on_newlines_and_blank_lines_are_skipped() {
        let two = [CANONICAL, b"\n \r\n", CANONICAL].concat();
        let messages: [&[u8]; 3] = [&two, b" \x0b ", b"x"];
        let s = scan_messages(&messages, 1 << 20, 1 << 20, 20);
        assert_eq!(s.kind, vec![SIMPLE, SIMPLE, OTHER]);
        // Values for the two SIMPLE lines only; a place for all three.
        assert_eq!((s.keys.len(), s.ts.len()), (2 * KEY_WIDTH, 2 * 8));
        assert_eq!(s.start.len(), 3 * 8);
        assert_eq!(s.message_state, vec![MESSAGE_OK, MESSAGE_EMPTY, MESSAGE_OK]);
        let oversized = scan_messages(&messages, 10, 1 << 20, 20);
        assert_eq!(
            oversized.message_state,
            vec![MESSAGE_OVERSIZED, MESSAGE_EMPTY, MESSAGE_OK]
        );
    }

    #[test]
    fn lines_that_cannot_be_json_past_the_limit_are_only_counted() {
        let flood = [CANONICAL, b"\n", &b"x\n".repeat(5), b"{}\n \t[1]\n"].concat();
        let messages: [&[u8]; 2] = [&flood, b"y\nz"];
        let s = scan_messages(&messages, 1 << 20, 1 << 20, 2);
        // The canonical line, two x lines, "{}" and "[1]" (they may be JSON), then y and z.
        assert_eq!(s.kind, [[SIMPLE].as_slice(), &[OTHER; 6]].concat());
        let skipped: Vec<i64> = s
            .not_json_skipped
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(skipped, vec![3, 0]);
    }
}
