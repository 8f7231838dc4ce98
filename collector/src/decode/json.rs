//! A borrowing reader of OTLP/JSON trace requests, for the hot path of
//! `analyze` over JSON lines. Only the fields the model takes are
//! deserialized, into borrowed strings (no allocation unless a string holds
//! escapes); everything else is skipped by the parser. It accepts only what
//! it fully understands — a trace request with hex ids, times as strings or
//! numbers, integer enums — and says no otherwise, so callers fall back to
//! the generated types, which give the same rows and the precise error.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Attr, AttrKey, Batch, Decoder, SpanFields};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Request<'a> {
    #[serde(borrow, default)]
    resource_spans: Vec<ResourceSpans<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    #[serde(borrow, default)]
    resource: Option<Resource<'a>>,
    #[serde(borrow, default)]
    scope_spans: Vec<ScopeSpans<'a>>,
}

#[derive(Deserialize)]
struct Resource<'a> {
    #[serde(borrow, default)]
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize)]
struct ScopeSpans<'a> {
    #[serde(borrow, default)]
    spans: Vec<Span<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Span<'a> {
    #[serde(borrow, default)]
    trace_id: Cow<'a, str>,
    #[serde(borrow, default)]
    span_id: Cow<'a, str>,
    #[serde(borrow, default)]
    parent_span_id: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default)]
    kind: i32,
    #[serde(default, deserialize_with = "u64_text_or_number")]
    start_time_unix_nano: u64,
    #[serde(default, deserialize_with = "u64_text_or_number")]
    end_time_unix_nano: u64,
    #[serde(borrow, default)]
    attributes: Vec<KeyValue<'a>>,
    #[serde(default)]
    status: Option<Status>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    code: i32,
}

#[derive(Deserialize)]
struct KeyValue<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<AnyValue<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyValue<'a> {
    #[serde(borrow, default)]
    string_value: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "i64_text_or_number")]
    int_value: Option<i64>,
    #[serde(default)]
    bool_value: Option<bool>,
    #[serde(default)]
    double_value: Option<f64>,
    #[serde(default)]
    array_value: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    kvlist_value: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    bytes_value: Option<serde::de::IgnoredAny>,
}

impl AnyValue<'_> {
    fn attr(&self) -> Option<Attr<'_>> {
        if let Some(s) = &self.string_value {
            Some(Attr::Str(s))
        } else if let Some(i) = self.int_value {
            Some(Attr::Int(i))
        } else if let Some(b) = self.bool_value {
            Some(Attr::Bool(b))
        } else if let Some(d) = self.double_value {
            Some(Attr::Double(d))
        } else if self.array_value.is_some()
            || self.kvlist_value.is_some()
            || self.bytes_value.is_some()
        {
            Some(Attr::Other)
        } else {
            None
        }
    }

    /// More than one member of the oneof: leave it to the generated types.
    fn ambiguous(&self) -> bool {
        [
            self.string_value.is_some(),
            self.int_value.is_some(),
            self.bool_value.is_some(),
            self.double_value.is_some(),
            self.array_value.is_some(),
            self.kvlist_value.is_some(),
            self.bytes_value.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count()
            > 1
    }
}

/// A 64-bit integer as OTLP/JSON writes it: a string, or a number.
struct TextOrNumber;

impl serde::de::Visitor<'_> for TextOrNumber {
    type Value = i128;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer or a string holding one")
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(v.into())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(v.into())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<i128, E> {
        v.parse().map_err(E::custom)
    }
}

fn u64_text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = d.deserialize_any(TextOrNumber)?;
    u64::try_from(v).map_err(serde::de::Error::custom)
}

fn i64_text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = d.deserialize_any(TextOrNumber)?;
    i64::try_from(v).map(Some).map_err(serde::de::Error::custom)
}

/// Hex id into `buf`; `None` when it is not hex or longer than `buf`.
fn hex<'b>(text: &str, buf: &'b mut [u8; 32]) -> Option<&'b [u8]> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(2) || t.len() > 2 * buf.len() {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (i, pair) in t.chunks_exact(2).enumerate() {
        buf[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(&buf[..t.len() / 2])
}

/// Decode one OTLP/JSON trace request, or `None` when the text is anything
/// else (another signal, an error, a form this reader leaves to the
/// generated types).
pub fn traces(decoder: &Decoder, text: &str) -> Option<Batch> {
    let request: Request<'_> = serde_json::from_str(text).ok()?;
    let mut batch = Batch::default();
    let (mut t, mut s, mut p) = ([0u8; 32], [0u8; 32], [0u8; 32]);
    for (ri, rs) in request.resource_spans.iter().enumerate() {
        let attrs = rs.resource.iter().flat_map(|r| r.attributes.iter());
        let mut values = Vec::new();
        for kv in attrs {
            let v = kv.value.as_ref();
            if v.is_some_and(AnyValue::ambiguous) {
                return None;
            }
            values.push((AttrKey::of(&kv.key), v.and_then(AnyValue::attr)));
        }
        let resource = decoder.resource_from(values.into_iter());
        for (si, ss) in rs.scope_spans.iter().enumerate() {
            for (pi, span) in ss.spans.iter().enumerate() {
                if span
                    .attributes
                    .iter()
                    .any(|kv| kv.value.as_ref().is_some_and(AnyValue::ambiguous))
                {
                    return None;
                }
                let fields = SpanFields {
                    trace_id: hex(&span.trace_id, &mut t)?,
                    span_id: hex(&span.span_id, &mut s)?,
                    parent_span_id: hex(&span.parent_span_id, &mut p)?,
                    name: decoder.interner().intern(&span.name),
                    kind: span.kind,
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    status_code: span.status.as_ref().map_or(0, |s| s.code),
                };
                let attributes = span.attributes.iter().map(|kv| {
                    (
                        AttrKey::of(&kv.key),
                        kv.value.as_ref().and_then(AnyValue::attr),
                    )
                });
                decoder.push_span(&mut batch, &resource, (ri, si, pi), &fields, attributes);
            }
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herdwatch_analyzer::model::Interner;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use super::*;

    fn slow(d: &Decoder, line: &str) -> Batch {
        let r: ExportTraceServiceRequest = serde_json::from_str(line).unwrap();
        d.traces(&r)
    }

    #[test]
    fn the_json_reader_gives_the_rows_the_generated_types_give() {
        let d = Decoder::new(Arc::new(Interner::default()));
        let mut json = Vec::new();
        let opts = herdwatch_samples::EmitOptions {
            semconv: herdwatch_samples::Semconv::Mixed,
            app_attributes: true,
            ..Default::default()
        };
        herdwatch_samples::generate(herdwatch_samples::Scenario::RetryStorm, 5, &opts, &mut json)
            .unwrap();
        let text = String::from_utf8(json).unwrap();
        let mut traces_seen = 0;
        for line in text.lines() {
            match traces(&d, line) {
                Some(fast) => {
                    traces_seen += 1;
                    assert_eq!(fast, slow(&d, line));
                }
                None => assert!(!line.starts_with("{\"resourceSpans")),
            }
        }
        assert!(traces_seen > 100);
    }

    #[test]
    fn edge_forms_match_or_are_left_to_the_generated_types() {
        let d = Decoder::new(Arc::new(Interner::default()));
        let span = |extra: &str| {
            format!(
                r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"s\"q"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","name":"n","kind":2,"startTimeUnixNano":1544712660000000000,"endTimeUnixNano":"1544712661000000000","attributes":[{{"key":"http.response.status_code","value":{{"intValue":"503"}}}},{{"key":"cache.hit","value":{{"boolValue":false}}}},{{"key":"x","value":{{"arrayValue":{{"values":[]}}}}}},{{"key":"y","value":{{}}}}]{extra}}}]}}]}}]}}"#
            )
        };
        for extra in [
            "",
            r#","status":{"code":2,"message":"m"}"#,
            r#","events":[],"unknown":1"#,
        ] {
            let line = span(extra);
            assert_eq!(
                traces(&d, &line).expect("understood"),
                slow(&d, &line),
                "{line}"
            );
        }
        // Wrong-length ids are rows the span builder rejects, as before.
        let short = span("").replace("EEE19B7EC3C1B174", "EEE1");
        assert_eq!(traces(&d, &short).unwrap(), slow(&d, &short));
        assert_eq!(traces(&d, &short).unwrap().rejected, 1);
        // Not hex, another signal, or not JSON: left to the generated types.
        assert!(
            traces(
                &d,
                &span("").replace("EEE19B7EC3C1B174", "not-hex-at-all!!")
            )
            .is_none()
        );
        assert!(traces(&d, r#"{"resourceMetrics":[]}"#).is_none());
        assert!(traces(&d, "{").is_none());
    }
}
