//! A borrowing reader of `ExportTraceServiceRequest` protobuf. It walks the
//! wire format once and hands the span builder the fields the model takes —
//! ids, name, kind, times, status code and the attributes — as slices of
//! the request's own bytes: no generated message, no per-attribute `String`
//! or `AnyValue`. Fields the model does not read (events, links, scopes,
//! trace state) are skipped by length; the strings it does read are checked
//! to be UTF-8, and a known field with the wrong wire type, a truncated
//! field or a bad varint fail the request, as the generated decoder would.

use std::sync::Arc;

use herdwatch_analyzer::model::{Batch, ResourceInfo, Sym};

use super::keys::AttrKey;
use super::{Attr, Decoder, SpanFields};

/// Why bytes are not a trace export request, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct WireError {
    pub offset: usize,
    pub what: &'static str,
}

/// One field's payload.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    /// The bytes and the offset of their first byte in the request.
    Len(&'a [u8], usize),
}

impl<'a> Field<'a> {
    fn wrong(at: usize) -> WireError {
        WireError {
            offset: at,
            what: "field has the wrong wire type",
        }
    }
    fn len(self, at: usize) -> Result<(&'a [u8], usize), WireError> {
        match self {
            Self::Len(b, base) => Ok((b, base)),
            _ => Err(Self::wrong(at)),
        }
    }
    fn varint(self, at: usize) -> Result<u64, WireError> {
        match self {
            Self::Varint(v) => Ok(v),
            _ => Err(Self::wrong(at)),
        }
    }
    fn fixed64(self, at: usize) -> Result<u64, WireError> {
        match self {
            Self::Fixed64(v) => Ok(v),
            _ => Err(Self::wrong(at)),
        }
    }
    fn fixed32(self, at: usize) -> Result<(), WireError> {
        match self {
            Self::Fixed32 => Ok(()),
            _ => Err(Self::wrong(at)),
        }
    }
    fn string(self, at: usize) -> Result<&'a str, WireError> {
        let (b, base) = self.len(at)?;
        std::str::from_utf8(b).map_err(|_| not_utf8(base))
    }
}

fn not_utf8(offset: usize) -> WireError {
    WireError {
        offset,
        what: "string is not valid UTF-8",
    }
}

/// Fields of one message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the request, for error messages.
    base: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn err(&self, what: &'static str) -> WireError {
        WireError {
            offset: self.base + self.pos,
            what,
        }
    }

    /// Field keys, lengths and most values are one byte: those without
    /// the loop.
    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => self.long_varint(),
        }
    }

    fn long_varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                if shift == 63 && b > 1 {
                    return Err(self.err("varint overflows 64 bits"));
                }
                return Ok(value);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err("truncated field"));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    /// The next field: its number, payload and the offset of its key.
    #[inline(always)]
    fn next_field(&mut self) -> Option<Result<(u64, Field<'a>, usize), WireError>> {
        (self.pos < self.buf.len()).then(|| self.field())
    }

    #[inline(always)]
    fn field(&mut self) -> Result<(u64, Field<'a>, usize), WireError> {
        let at = self.base + self.pos;
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(WireError {
                offset: at,
                what: "invalid field number",
            });
        }
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| self.err("length too large"))?;
                let base = self.base + self.pos;
                Field::Len(self.take(n)?, base)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            _ => {
                return Err(WireError {
                    offset: at,
                    what: "unsupported wire type",
                });
            }
        };
        Ok((number, field, at))
    }
}

/// An attribute: its key if the decoder reads it, and its value.
type KeyValue<'a> = (Option<AttrKey>, Option<Attr<'a>>);
type Attrs<'a> = Vec<KeyValue<'a>>;

/// Decode a protobuf `ExportTraceServiceRequest` into a batch, with the same
/// rows and rejections as [`Decoder::traces`] on the generated message.
pub fn traces(decoder: &Decoder, bytes: &[u8]) -> Result<Batch, WireError> {
    // Room for every span at once instead of a copy at every doubling.
    let mut batch = Batch {
        spans: Vec::with_capacity(count_spans(bytes)),
        ..Batch::default()
    };
    let mut attrs: Attrs<'_> = Vec::with_capacity(16);
    let mut scopes: Vec<(&[u8], usize)> = Vec::new();
    let mut fields = Fields::new(bytes, 0);
    let mut ri = 0;
    while let Some(f) = fields.next_field() {
        let (number, field, at) = f?;
        if number == 1 {
            let (b, base) = field.len(at)?;
            resource_spans(decoder, &mut batch, b, base, ri, &mut attrs, &mut scopes)?;
            ri += 1;
        }
    }
    Ok(batch)
}

/// How many spans `bytes` holds, from the lengths of the messages around
/// them (nothing inside a span is read); what the walk finds before any
/// malformed part, which the decoding proper will report.
fn count_spans(bytes: &[u8]) -> usize {
    /// The length-delimited fields numbered `number` of a message.
    fn each(buf: &[u8], number: u64) -> impl Iterator<Item = &[u8]> {
        let mut fields = Fields::new(buf, 0);
        std::iter::from_fn(move || {
            loop {
                match fields.next_field()? {
                    Ok((n, Field::Len(b, _), _)) if n == number => return Some(b),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        })
    }
    each(bytes, 1)
        .flat_map(|rs| each(rs, 2))
        .map(|ss| each(ss, 2).count())
        .sum()
}

fn resource_spans<'a>(
    d: &Decoder,
    batch: &mut Batch,
    buf: &'a [u8],
    base: usize,
    ri: usize,
    attrs: &mut Attrs<'a>,
    scopes: &mut Vec<(&'a [u8], usize)>,
) -> Result<(), WireError> {
    let mut resource = None;
    scopes.clear();
    let mut fields = Fields::new(buf, base);
    while let Some(f) = fields.next_field() {
        let (number, field, at) = f?;
        match number {
            1 => resource = Some(field.len(at)?),
            2 => scopes.push(field.len(at)?),
            3 => {
                field.string(at)?;
            }
            _ => {}
        }
    }
    attrs.clear();
    if let Some((b, base)) = resource {
        let mut fields = Fields::new(b, base);
        while let Some(f) = fields.next_field() {
            let (number, field, at) = f?;
            match number {
                1 => {
                    let (b, base) = field.len(at)?;
                    attrs.push(key_value(d, b, base)?);
                }
                2 => {
                    field.varint(at)?;
                }
                _ => {}
            }
        }
    }
    let info = d.resource_from(attrs.drain(..));
    for (si, &(b, base)) in scopes.iter().enumerate() {
        scope_spans(d, batch, &info, b, base, (ri, si), attrs)?;
    }
    Ok(())
}

fn scope_spans<'a>(
    d: &Decoder,
    batch: &mut Batch,
    info: &Arc<ResourceInfo>,
    buf: &'a [u8],
    base: usize,
    (ri, si): (usize, usize),
    attrs: &mut Attrs<'a>,
) -> Result<(), WireError> {
    let mut fields = Fields::new(buf, base);
    let mut pi = 0;
    while let Some(f) = fields.next_field() {
        let (number, field, at) = f?;
        match number {
            1 => {
                field.len(at)?;
            }
            2 => {
                let (b, base) = field.len(at)?;
                span(d, batch, info, b, base, (ri, si, pi), attrs)?;
                pi += 1;
            }
            3 => {
                field.string(at)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn span<'a>(
    d: &Decoder,
    batch: &mut Batch,
    info: &Arc<ResourceInfo>,
    buf: &'a [u8],
    base: usize,
    loc: (usize, usize, usize),
    attrs: &mut Attrs<'a>,
) -> Result<(), WireError> {
    attrs.clear();
    let mut s = SpanFields {
        trace_id: &[],
        span_id: &[],
        parent_span_id: &[],
        name: Sym::empty(),
        kind: 0,
        start_unix_nano: 0,
        end_unix_nano: 0,
        status_code: 0,
    };
    let mut fields = Fields::new(buf, base);
    while let Some(f) = fields.next_field() {
        let (number, field, at) = f?;
        match number {
            1 => s.trace_id = field.len(at)?.0,
            2 => s.span_id = field.len(at)?.0,
            3 => {
                field.string(at)?;
            }
            4 => s.parent_span_id = field.len(at)?.0,
            5 => {
                let (b, base) = field.len(at)?;
                s.name = match d.interner().lookup(b) {
                    Some(v) => v.into(),
                    None => d
                        .interner()
                        .intern(std::str::from_utf8(b).map_err(|_| not_utf8(base))?),
                };
            }
            6 => s.kind = field.varint(at)? as i32,
            7 => s.start_unix_nano = field.fixed64(at)?,
            8 => s.end_unix_nano = field.fixed64(at)?,
            9 => {
                let (b, base) = field.len(at)?;
                attrs.push(key_value(d, b, base)?);
            }
            10 | 12 | 14 => {
                field.varint(at)?;
            }
            11 | 13 => {
                field.len(at)?;
            }
            15 => {
                let (b, base) = field.len(at)?;
                s.status_code = status_code(b, base)?;
            }
            16 => field.fixed32(at)?,
            _ => {}
        }
    }
    d.push_span(batch, info, loc, &s, attrs.drain(..));
    Ok(())
}

fn status_code(buf: &[u8], base: usize) -> Result<i32, WireError> {
    let mut code = 0;
    let mut fields = Fields::new(buf, base);
    while let Some(f) = fields.next_field() {
        let (number, field, at) = f?;
        match number {
            2 => {
                field.string(at)?;
            }
            3 => code = field.varint(at)? as i32,
            _ => {}
        }
    }
    Ok(code)
}

/// A key-value: the key if the decoder reads it (any other is checked to
/// be UTF-8, then forgotten), and the value.
fn key_value<'a>(d: &Decoder, buf: &'a [u8], base: usize) -> Result<KeyValue<'a>, WireError> {
    if let Some(kv) = sdk_key_value(d, buf, base) {
        return kv;
    }
    let mut key = None;
    let mut value = None;
    let mut fields = Fields::new(buf, base);
    while let Some(f) = fields.next_field() {
        let (number, field, at) = f?;
        match number {
            // A key the decoder reads is UTF-8: found by its bytes, it
            // needs no check.
            1 => {
                key = match AttrKey::find(field.len(at)?.0) {
                    Some(k) => Some(k.key),
                    None => {
                        field.string(at)?;
                        None
                    }
                }
            }
            2 => {
                let (b, base) = field.len(at)?;
                value = any_value(b, base)?;
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// A key-value laid out as every SDK writes it — the key, then the value
/// holding one field, lengths under 128 — read without the general walk,
/// to the same result; `None` for any other layout, which the general walk
/// reads. The string value of a key whose value is interned as it is, is
/// found among the values this thread interned lately by its bytes.
#[inline(always)]
fn sdk_key_value<'a>(
    d: &Decoder,
    buf: &'a [u8],
    base: usize,
) -> Option<Result<KeyValue<'a>, WireError>> {
    let [0x0a, key_len, rest @ ..] = buf else {
        return None;
    };
    let (key, rest) = rest.split_at_checked(usize::from(*key_len))?;
    let [0x12, value_len, value @ ..] = rest else {
        return None;
    };
    if *key_len >= 0x80 || *value_len >= 0x80 || usize::from(*value_len) != value.len() {
        return None;
    }
    let known = AttrKey::find(key);
    if known.is_none() && std::str::from_utf8(key).is_err() {
        return Some(Err(not_utf8(base + 2)));
    }
    let at = base + 4 + key.len();
    let attr = match value {
        [0x0a, n, s @ ..] if *n < 0x80 && usize::from(*n) == s.len() => {
            let found = known
                .filter(|k| k.verbatim)
                .and_then(|_| d.interner().lookup(s));
            match found {
                Some(v) => Attr::Interned(v),
                None => match std::str::from_utf8(s) {
                    Ok(s) => Attr::Str(s),
                    Err(_) => return Some(Err(not_utf8(at + 2))),
                },
            }
        }
        [0x10, b] if *b < 0x80 => Attr::Bool(*b != 0),
        [0x18, ..] => {
            let mut f = Fields::new(value, at);
            f.pos = 1;
            match f.varint() {
                Ok(v) if f.pos == value.len() => Attr::Int(v as i64),
                _ => return None,
            }
        }
        [0x21, x @ ..] => Attr::Double(f64::from_bits(u64::from_le_bytes(x.try_into().ok()?))),
        _ => return None,
    };
    Some(Ok((known.map(|k| k.key), Some(attr))))
}

fn any_value(buf: &[u8], base: usize) -> Result<Option<Attr<'_>>, WireError> {
    let mut value = None;
    let mut fields = Fields::new(buf, base);
    while let Some(f) = fields.next_field() {
        let (number, field, at) = f?;
        value = match number {
            1 => Some(Attr::Str(field.string(at)?)),
            2 => Some(Attr::Bool(field.varint(at)? != 0)),
            3 => Some(Attr::Int(field.varint(at)? as i64)),
            4 => Some(Attr::Double(f64::from_bits(field.fixed64(at)?))),
            5..=7 => {
                field.len(at)?;
                Some(Attr::Other)
            }
            _ => value,
        };
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herdwatch_analyzer::model::Interner;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    fn both(bytes: &[u8]) -> (Result<Batch, WireError>, Result<Batch, prost::DecodeError>) {
        let d = Decoder::new(Arc::new(Interner::default()));
        let wire = traces(&d, bytes);
        let generated = ExportTraceServiceRequest::decode(bytes).map(|r| d.traces(&r));
        (wire, generated)
    }

    fn captures() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (scenario, opts) in [
            (
                herdwatch_samples::Scenario::ColdCache,
                herdwatch_samples::EmitOptions::default(),
            ),
            (
                herdwatch_samples::Scenario::CacheUnavailable,
                herdwatch_samples::EmitOptions {
                    semconv: herdwatch_samples::Semconv::Mixed,
                    unsanitised: true,
                    app_attributes: true,
                    ..Default::default()
                },
            ),
        ] {
            let mut json = Vec::new();
            herdwatch_samples::generate(scenario, 3, &opts, &mut json).unwrap();
            for line in json
                .split(|b| *b == b'\n')
                .filter(|l| l.starts_with(b"{\"resourceSpans"))
            {
                let r: ExportTraceServiceRequest = serde_json::from_slice(line).unwrap();
                out.push(r.encode_to_vec());
            }
        }
        out
    }

    #[test]
    fn the_wire_reader_gives_the_rows_the_generated_decoder_gives() {
        let captures = captures();
        assert!(captures.len() > 100);
        for bytes in &captures {
            let (wire, generated) = both(bytes);
            let wire = wire.unwrap();
            // Room was made for exactly the spans there were.
            assert_eq!(count_spans(bytes), wire.spans.len());
            assert_eq!(wire.spans.capacity(), wire.spans.len());
            assert_eq!(wire, generated.unwrap());
        }
    }

    #[test]
    fn every_truncation_fails_or_decodes_as_the_generated_decoder_does() {
        let bytes = &captures()[0][..4096];
        for n in 0..bytes.len() {
            match both(&bytes[..n]) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "truncated at {n}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("truncated at {n}: wire {a:?} vs generated {b:?}"),
            }
        }
    }

    /// Keys the decoder reads are found by their bytes; any other key is
    /// still checked to be UTF-8, in either layout.
    #[test]
    fn known_keys_are_found_by_their_bytes_and_others_are_checked() {
        let d = Decoder::new(Arc::new(Interner::default()));
        let kv = [0x0a, 0x02, b'o', b'k'];
        assert_eq!(key_value(&d, &kv, 0).unwrap(), (None, None));
        let kv = [
            &[0x0a, 0x07][..],
            b"db.name",
            &[0x12, 0x03, 0x0a, 0x01, b'x'],
        ]
        .concat();
        let (key, value) = key_value(&d, &kv, 0).unwrap();
        assert_eq!(key, Some(AttrKey::DbName));
        assert_eq!(value.as_ref().and_then(Attr::text), Some("x"));
        // Alone, and with a value (the layout an SDK writes).
        for bad in [
            &[0x0a, 0x02, 0xff, 0xfe][..],
            &[0x0a, 0x02, 0xff, 0xfe, 0x12, 0x02, 0x10, 0x01],
        ] {
            let e = key_value(&d, bad, 10).unwrap_err();
            assert_eq!((e.offset, e.what), (12, "string is not valid UTF-8"));
        }
        // A bad value of a key read, and of one not read.
        for key in [&b"db.name"[..], b"db.nome"] {
            let kv = [
                &[0x0a, 0x07][..],
                key,
                &[0x12, 0x04, 0x0a, 0x02, 0xc3, 0x28],
            ]
            .concat();
            let e = key_value(&d, &kv, 0).unwrap_err();
            assert_eq!((e.offset, e.what), (13, "string is not valid UTF-8"));
        }
    }

    #[test]
    fn bad_bytes_are_named_with_their_offset() {
        // Field 1 (resource_spans) as a varint: the wrong wire type.
        let d = Decoder::new(Arc::new(Interner::default()));
        let e = traces(&d, &[0x08, 0x01]).unwrap_err();
        assert_eq!((e.offset, e.what), (0, "field has the wrong wire type"));
        // A length running past the end.
        let e = traces(&d, &[0x0a, 0x05, 0x00]).unwrap_err();
        assert_eq!(e.what, "truncated field");
        // A span name that is not UTF-8, inside resource_spans → scope_spans → spans.
        let span = [0x2a, 0x02, 0xff, 0xfe];
        let scope = [&[0x12, span.len() as u8][..], &span].concat();
        let rs = [&[0x12, scope.len() as u8][..], &scope].concat();
        let req = [&[0x0a, rs.len() as u8][..], &rs].concat();
        let e = traces(&d, &req).unwrap_err();
        assert_eq!((e.offset, e.what), (8, "string is not valid UTF-8"));
        assert!(ExportTraceServiceRequest::decode(&req[..]).is_err());
    }
}
