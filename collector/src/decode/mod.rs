//! Decoding: OTLP messages (already parsed from protobuf or JSON) into the
//! analyzer's model. One pass over each span's attributes picks out what the
//! analysis reads (SPEC §3) in both semantic-convention generations; the rest
//! is counted as dropped. Invalid items inside a good request are rejected
//! one by one and reported through `partial_success`.
//!
//! Trace requests in protobuf skip the generated types altogether: [`wire`]
//! reads the fields the analysis uses straight from the bytes, borrowing
//! strings, and feeds the same span builder.

pub mod json;
mod keys;
pub mod wire;

use std::sync::Arc;

use herdwatch_analyzer::model::{
    Batch, Interned, Interner, LogMarker, MAX_POINT_ATTRIBUTES, MarkerKind, MetricPoint,
    MetricValue, ResourceInfo, SpanKind, SpanRow, StatusCode, Sym, Temporality,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;

use keys::AttrKey;

/// Turns OTLP messages into model rows. Cheap to clone; share one per process
/// so that every receiver interns into the same table.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    interner: Arc<Interner>,
}

impl Decoder {
    pub fn new(interner: Arc<Interner>) -> Self {
        Self { interner }
    }

    pub fn interner(&self) -> &Arc<Interner> {
        &self.interner
    }

    fn resource(&self, resource: Option<&Resource>) -> Arc<ResourceInfo> {
        let attrs = resource.into_iter().flat_map(|r| r.attributes.iter());
        self.resource_from(attrs.map(|kv| (AttrKey::of(&kv.key), Attr::of(kv))))
    }

    /// The resource from its attributes.
    fn resource_from<'a>(
        &self,
        attributes: impl Iterator<Item = (Option<AttrKey>, Option<Attr<'a>>)>,
    ) -> Arc<ResourceInfo> {
        let mut service = Sym::empty();
        let mut version = Sym::empty();
        let mut instance = Sym::empty();
        for (key, value) in attributes {
            let slot = match key {
                Some(AttrKey::ServiceName) => &mut service,
                Some(AttrKey::ServiceVersion) => &mut version,
                Some(AttrKey::ServiceInstanceId) => &mut instance,
                _ => continue,
            };
            *slot = match value {
                Some(Attr::Str(s)) => self.interner.intern(s),
                Some(Attr::Interned(s)) => s.into(),
                _ => Sym::empty(),
            };
        }
        if service.is_empty() {
            // The SDKs' own default when the resource names no service.
            service = self.interner.intern("unknown_service");
        }
        Arc::new(ResourceInfo {
            service,
            version,
            instance,
        })
    }

    /// Decode a trace export request. Spans with invalid ids are rejected and
    /// counted; the rest are kept.
    pub fn traces(&self, request: &ExportTraceServiceRequest) -> Batch {
        let mut batch = Batch::default();
        for (ri, rs) in request.resource_spans.iter().enumerate() {
            let resource = self.resource(rs.resource.as_ref());
            for (si, ss) in rs.scope_spans.iter().enumerate() {
                for (pi, span) in ss.spans.iter().enumerate() {
                    let fields = SpanFields {
                        trace_id: &span.trace_id,
                        span_id: &span.span_id,
                        parent_span_id: &span.parent_span_id,
                        name: self.interner.intern(&span.name),
                        kind: span.kind,
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                        status_code: span.status.as_ref().map(|s| s.code).unwrap_or(0),
                    };
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| (AttrKey::of(&kv.key), Attr::of(kv)));
                    self.push_span(&mut batch, &resource, (ri, si, pi), &fields, attributes);
                }
            }
        }
        batch
    }

    /// Decode a protobuf trace export request straight from its bytes
    /// ([`wire`]): the same batch as [`Decoder::traces`] on the parsed
    /// message, without building it.
    pub fn traces_protobuf(&self, bytes: &[u8]) -> Result<Batch, wire::WireError> {
        wire::traces(self, bytes)
    }

    /// Check one span and add its row to `batch`, or count it rejected with
    /// the reason (`at` locates it in the request).
    fn push_span<'a>(
        &self,
        batch: &mut Batch,
        resource: &Arc<ResourceInfo>,
        at: (usize, usize, usize),
        span: &SpanFields<'_>,
        attributes: impl Iterator<Item = (Option<AttrKey>, Option<Attr<'a>>)>,
    ) {
        let trace_id: Result<[u8; 16], _> = span.trace_id.try_into();
        let span_id: Result<[u8; 8], _> = span.span_id.try_into();
        let problem = match (&trace_id, &span_id) {
            (Err(_), _) => Some(format!(
                "traceId must be 16 bytes, got {}",
                span.trace_id.len()
            )),
            (Ok(t), _) if *t == [0; 16] => Some("traceId is all zeros".to_string()),
            (_, Err(_)) => Some(format!(
                "spanId must be 8 bytes, got {}",
                span.span_id.len()
            )),
            (_, Ok(s)) if *s == [0; 8] => Some("spanId is all zeros".to_string()),
            _ if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 => {
                Some(format!(
                    "parentSpanId must be empty or 8 bytes, got {}",
                    span.parent_span_id.len()
                ))
            }
            _ if span.end_unix_nano < span.start_unix_nano => {
                Some("endTimeUnixNano is before startTimeUnixNano".to_string())
            }
            _ => None,
        };
        let (Ok(trace_id), Ok(span_id), None) = (trace_id, span_id, &problem) else {
            batch.rejected += 1;
            if batch.reject_reason.is_none() {
                let (ri, si, pi) = at;
                batch.reject_reason = Some(format!(
                    "resourceSpans[{ri}].scopeSpans[{si}].spans[{pi}]: {}",
                    problem.unwrap_or_default()
                ));
            }
            return;
        };
        let mut parent = [0u8; 8];
        if span.parent_span_id.len() == 8 {
            parent.copy_from_slice(span.parent_span_id);
        }
        let empty = self.interner.empty();
        let mut row = SpanRow {
            resource: resource.clone(),
            trace_id,
            span_id,
            parent_span_id: parent,
            kind: SpanKind::from_otlp(span.kind),
            name: span.name.clone(),
            start_unix_nano: span.start_unix_nano,
            end_unix_nano: span.end_unix_nano,
            status: StatusCode::from_otlp(span.status_code),
            http_route: empty.clone(),
            http_status: 0,
            http_method: empty.clone(),
            url_path: empty.clone(),
            db_system: empty.clone(),
            db_operation: empty.clone(),
            db_query: empty.clone(),
            db_namespace: empty.clone(),
            server_address: empty.clone(),
            cache_key: empty.clone(),
            cache_hit: None,
            resend_count: 0,
        };
        batch.dropped_attributes += self.span_attributes(&mut row, attributes);
        batch.spans.push(row);
    }

    /// Fill `row` from its attributes; returns how many were not used.
    fn span_attributes<'a>(
        &self,
        row: &mut SpanRow,
        attributes: impl Iterator<Item = (Option<AttrKey>, Option<Attr<'a>>)>,
    ) -> u64 {
        let mut dropped = 0;
        // Stable names win over legacy ones whatever their order.
        let mut legacy_system = None;
        let mut legacy_operation = None;
        let mut legacy_query = None;
        let mut legacy_namespace = None;
        let mut legacy_status = None;
        let mut legacy_method = None;
        let mut legacy_target = None;
        let mut legacy_peer = None;
        for (key, value) in attributes {
            let Some(value) = value else {
                dropped += 1;
                continue;
            };
            let Some(key) = key else {
                dropped += 1;
                continue;
            };
            match key {
                AttrKey::HttpRoute => row.http_route = self.sym(value),
                AttrKey::HttpResponseStatusCode => {
                    row.http_status = value.int().unwrap_or(0) as u16
                }
                AttrKey::HttpStatusCode => legacy_status = value.int(),
                AttrKey::HttpRequestMethod => row.http_method = self.sym(value),
                AttrKey::HttpMethod => legacy_method = Some(value),
                AttrKey::UrlPath => row.url_path = self.sym(value),
                AttrKey::HttpTarget => legacy_target = Some(value),
                AttrKey::DbSystemName => row.db_system = self.lower_sym(value),
                AttrKey::DbSystem => legacy_system = Some(value),
                AttrKey::DbOperationName => row.db_operation = self.sym(value),
                AttrKey::DbOperation => legacy_operation = Some(value),
                AttrKey::DbQueryText => row.db_query = self.sym(value),
                AttrKey::DbStatement => legacy_query = Some(value),
                AttrKey::DbNamespace => row.db_namespace = self.sym(value),
                AttrKey::DbName => legacy_namespace = Some(value),
                AttrKey::ServerAddress => row.server_address = self.sym(value),
                AttrKey::NetPeerName => legacy_peer = Some(value),
                AttrKey::CacheKey => row.cache_key = self.sym(value),
                AttrKey::CacheHit => row.cache_hit = value.boolean(),
                AttrKey::CacheResult | AttrKey::CacheOutcome => {
                    if let Some(s) = value.text() {
                        row.cache_hit = match s.to_ascii_lowercase().as_str() {
                            "hit" => Some(true),
                            "miss" => Some(false),
                            _ => row.cache_hit,
                        };
                    }
                }
                AttrKey::HttpRequestResendCount => {
                    row.resend_count = value.int().unwrap_or(0).clamp(0, u32::MAX as i64) as u32
                }
                AttrKey::ServiceName | AttrKey::ServiceVersion | AttrKey::ServiceInstanceId => {
                    dropped += 1
                }
            }
        }
        if row.db_system.is_empty() {
            if let Some(v) = legacy_system {
                row.db_system = self.lower_sym(v);
            }
        } else if legacy_system.is_some() {
            dropped += 1;
        }
        if row.db_operation.is_empty()
            && let Some(v) = legacy_operation
        {
            row.db_operation = self.sym(v);
        }
        if row.db_query.is_empty()
            && let Some(v) = legacy_query
        {
            row.db_query = self.sym(v);
        }
        if row.db_namespace.is_empty()
            && let Some(v) = legacy_namespace
        {
            row.db_namespace = self.sym(v);
        }
        if row.http_status == 0
            && let Some(v) = legacy_status
        {
            row.http_status = v as u16;
        }
        if row.http_method.is_empty()
            && let Some(v) = legacy_method
        {
            row.http_method = self.sym(v);
        }
        if row.url_path.is_empty()
            && let Some(target) = legacy_target.as_ref().and_then(Attr::text)
        {
            let path = target.split('?').next().unwrap_or("");
            row.url_path = self.interner.intern(path);
        }
        if row.server_address.is_empty()
            && let Some(v) = legacy_peer
        {
            row.server_address = self.sym(v);
        }
        dropped
    }

    fn sym(&self, value: Attr<'_>) -> Sym {
        match value {
            Attr::Str(s) => self.interner.intern(s),
            Attr::Interned(s) => s.into(),
            Attr::Int(i) => self.interner.intern(&i.to_string()),
            Attr::Bool(b) => self.interner.intern(if b { "true" } else { "false" }),
            Attr::Double(d) => self.interner.intern(&d.to_string()),
            Attr::Other => self.interner.empty(),
        }
    }

    fn lower_sym(&self, value: Attr<'_>) -> Sym {
        match value {
            Attr::Str(s) if s.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.interner.intern(&s.to_ascii_lowercase())
            }
            Attr::Interned(s) if s.as_str().bytes().any(|b| b.is_ascii_uppercase()) => {
                self.interner.intern(&s.as_str().to_ascii_lowercase())
            }
            other => self.sym(other),
        }
    }

    /// Decode a metrics export request.
    pub fn metrics(&self, request: &ExportMetricsServiceRequest) -> Batch {
        let mut batch = Batch::default();
        for (ri, rm) in request.resource_metrics.iter().enumerate() {
            let resource = self.resource(rm.resource.as_ref());
            for (si, sm) in rm.scope_metrics.iter().enumerate() {
                for (mi, m) in sm.metrics.iter().enumerate() {
                    let name = self.interner.intern(&m.name);
                    let unit = self.interner.intern(&m.unit);
                    let reject = |batch: &mut Batch, what: &str| {
                        batch.rejected += 1;
                        if batch.reject_reason.is_none() {
                            batch.reject_reason = Some(format!(
                                "resourceMetrics[{ri}].scopeMetrics[{si}].metrics[{mi}] ({}): {what}",
                                m.name
                            ));
                        }
                    };
                    if m.name.is_empty() {
                        let n = data_point_count(m.data.as_ref());
                        for _ in 0..n.max(1) {
                            reject(&mut batch, "metric name is empty");
                        }
                        continue;
                    }
                    let push = |batch: &mut Batch,
                                attrs: &[KeyValue],
                                start: u64,
                                time: u64,
                                value: MetricValue| {
                        let (attributes, dropped) = self.point_attributes(attrs);
                        batch.dropped_attributes += dropped;
                        batch.points.push(MetricPoint {
                            resource: resource.clone(),
                            name: name.clone(),
                            unit: unit.clone(),
                            attributes,
                            start_unix_nano: start,
                            time_unix_nano: time,
                            value,
                        });
                    };
                    match &m.data {
                        None => reject(&mut batch, "metric has no data"),
                        Some(metric::Data::Gauge(g)) => {
                            for p in &g.data_points {
                                match number(p.value.as_ref()) {
                                    Some(v) => push(
                                        &mut batch,
                                        &p.attributes,
                                        p.start_time_unix_nano,
                                        p.time_unix_nano,
                                        MetricValue::Gauge(v),
                                    ),
                                    None => reject(&mut batch, "gauge point has no value"),
                                }
                            }
                        }
                        Some(metric::Data::Sum(s)) => {
                            let temporality = Temporality::from_otlp(s.aggregation_temporality);
                            for p in &s.data_points {
                                match number(p.value.as_ref()) {
                                    Some(value) => push(
                                        &mut batch,
                                        &p.attributes,
                                        p.start_time_unix_nano,
                                        p.time_unix_nano,
                                        MetricValue::Sum {
                                            value,
                                            monotonic: s.is_monotonic,
                                            temporality,
                                        },
                                    ),
                                    None => reject(&mut batch, "sum point has no value"),
                                }
                            }
                        }
                        Some(metric::Data::Histogram(h)) => {
                            let temporality = Temporality::from_otlp(h.aggregation_temporality);
                            for p in &h.data_points {
                                // Kept even when the counts do not match the
                                // bounds (the protocol's own example does
                                // that); quantiles skip such points.
                                push(
                                    &mut batch,
                                    &p.attributes,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    MetricValue::Histogram {
                                        count: p.count,
                                        sum: p.sum.unwrap_or(0.0),
                                        bounds: Arc::from(p.explicit_bounds.as_slice()),
                                        bucket_counts: p.bucket_counts.clone(),
                                        temporality,
                                    },
                                );
                            }
                        }
                        Some(metric::Data::ExponentialHistogram(h)) => {
                            let temporality = Temporality::from_otlp(h.aggregation_temporality);
                            for p in &h.data_points {
                                let (offset, counts) = p
                                    .positive
                                    .as_ref()
                                    .map(|b| (b.offset, b.bucket_counts.clone()))
                                    .unwrap_or_default();
                                push(
                                    &mut batch,
                                    &p.attributes,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    MetricValue::ExponentialHistogram {
                                        count: p.count,
                                        sum: p.sum.unwrap_or(0.0),
                                        scale: p.scale,
                                        zero_count: p.zero_count,
                                        positive_offset: offset,
                                        positive_counts: counts,
                                        temporality,
                                    },
                                );
                            }
                        }
                        Some(metric::Data::Summary(s)) => {
                            for p in &s.data_points {
                                push(
                                    &mut batch,
                                    &p.attributes,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    MetricValue::Summary {
                                        count: p.count,
                                        sum: p.sum,
                                        quantiles: p
                                            .quantile_values
                                            .iter()
                                            .map(|q| (q.quantile, q.value))
                                            .collect(),
                                    },
                                );
                            }
                        }
                    }
                }
            }
        }
        batch
    }

    fn point_attributes(&self, attrs: &[KeyValue]) -> (Vec<(Sym, Sym)>, u64) {
        let mut out: Vec<(Sym, Sym)> = Vec::with_capacity(attrs.len().min(MAX_POINT_ATTRIBUTES));
        let mut dropped = 0;
        for kv in attrs {
            let Some(value) = Attr::of(kv) else {
                dropped += 1;
                continue;
            };
            if out.len() == MAX_POINT_ATTRIBUTES {
                dropped += 1;
                continue;
            }
            let value = self.sym(value);
            if value.is_empty() {
                dropped += 1;
                continue;
            }
            out.push((self.interner.intern(&kv.key), value));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        (out, dropped)
    }

    /// Decode a logs export request: keep the records that mark a deploy,
    /// restart or cache flush; count the rest.
    pub fn logs(&self, request: &ExportLogsServiceRequest) -> Batch {
        let mut batch = Batch::default();
        for rl in &request.resource_logs {
            let resource = self.resource(rl.resource.as_ref());
            for sl in &rl.scope_logs {
                for record in &sl.log_records {
                    let body = record.body.as_ref().and_then(any_str).unwrap_or("");
                    let mut kind = marker_from_text(&record.event_name);
                    for kv in &record.attributes {
                        if kind.is_some() {
                            break;
                        }
                        if matches!(kv.key.as_str(), "event.name" | "event" | "herdwatch.marker")
                            && let Some(v) = str_value(kv)
                        {
                            kind = marker_from_text(v);
                        }
                    }
                    let kind = kind.or_else(|| marker_from_body(body));
                    match kind {
                        Some(kind) => {
                            let time = if record.time_unix_nano != 0 {
                                record.time_unix_nano
                            } else {
                                record.observed_time_unix_nano
                            };
                            batch.markers.push(LogMarker {
                                resource: resource.clone(),
                                time_unix_nano: time,
                                kind,
                                body: self.interner.intern(body),
                            });
                        }
                        None => batch.other_logs += 1,
                    }
                }
            }
        }
        batch
    }
}

fn data_point_count(data: Option<&metric::Data>) -> usize {
    match data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// An event name such as `deploy`, `service.restart`, `cache.flush`.
fn marker_from_text(text: &str) -> Option<MarkerKind> {
    let t = text.to_ascii_lowercase();
    if t.is_empty() {
        None
    } else if t.contains("flush") {
        Some(MarkerKind::CacheFlush)
    } else if t.contains("deploy") || t.contains("rollout") {
        Some(MarkerKind::Deploy)
    } else if t.contains("restart") || t.contains("startup") {
        Some(MarkerKind::Restart)
    } else {
        None
    }
}

/// A free-text body that announces a deploy, a restart or a flush.
fn marker_from_body(body: &str) -> Option<MarkerKind> {
    let b = body.to_ascii_lowercase();
    let words = |w: &[&str]| w.iter().any(|w| b.contains(w));
    if words(&[
        "flushall",
        "flushdb",
        "cache flush",
        "cache flushed",
        "flushed the cache",
    ]) {
        Some(MarkerKind::CacheFlush)
    } else if words(&[
        "deployed",
        "deploying",
        "deployment",
        "rolled out",
        "new version",
    ]) {
        Some(MarkerKind::Deploy)
    } else if words(&[
        "restarted",
        "restarting",
        "service started",
        "starting service",
    ]) {
        Some(MarkerKind::Restart)
    } else {
        None
    }
}

fn str_value(kv: &KeyValue) -> Option<&str> {
    kv.value.as_ref().and_then(any_str)
}

fn any_str(v: &AnyValue) -> Option<&str> {
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// The fields of a span the model takes, borrowed from a decoded message or
/// straight from the wire.
struct SpanFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    name: Sym,
    kind: i32,
    start_unix_nano: u64,
    end_unix_nano: u64,
    status_code: i32,
}

/// An attribute value as the model reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Attr<'a> {
    Str(&'a str),
    /// A string the reader found interned.
    Interned(Interned),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Arrays, maps and bytes: present but not read.
    Other,
}

impl<'a> Attr<'a> {
    fn of(kv: &'a KeyValue) -> Option<Self> {
        Some(match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Self::Str(s),
            Value::IntValue(i) => Self::Int(*i),
            Value::BoolValue(b) => Self::Bool(*b),
            Value::DoubleValue(d) => Self::Double(*d),
            _ => Self::Other,
        })
    }

    fn text(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            Self::Interned(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match *self {
            Self::Int(i) => Some(i),
            Self::Double(d) => Some(d as i64),
            _ => self.text()?.parse().ok(),
        }
    }

    fn boolean(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => match self.text()?.to_ascii_lowercase().as_str() {
                "true" | "hit" => Some(true),
                "false" | "miss" => Some(false),
                _ => None,
            },
        }
    }
}

fn number(value: Option<&number_data_point::Value>) -> Option<f64> {
    match value? {
        number_data_point::Value::AsDouble(d) => Some(*d),
        number_data_point::Value::AsInt(i) => Some(*i as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue("shop".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn span(attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            kind: 3,
            name: "GET".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes,
            ..Default::default()
        }
    }

    /// Every key of `SPAN_KEYS` is one the decoder uses (not counted as
    /// dropped), those marked so have their string value kept as it is,
    /// and every key of `RESOURCE_KEYS` fills the resource.
    #[test]
    fn the_listed_keys_are_the_ones_read() {
        let d = Decoder::default();
        for &keys::KeyInfo {
            name: k, verbatim, ..
        } in &keys::SPAN_KEYS
        {
            let value = match k {
                "http.response.status_code" | "http.status_code" | "http.request.resend_count" => {
                    Value::IntValue(200)
                }
                "cache.hit" => Value::BoolValue(true),
                _ => Value::StringValue("x".into()),
            };
            let b = d.traces(&request(vec![span(vec![kv(k, value)])]));
            assert_eq!(b.dropped_attributes, 0, "{k}");
            // A text that cutting at `?` would change (system names are
            // lowered, but most are lower case already).
            let b = d.traces(&request(vec![span(vec![kv(
                k,
                Value::StringValue("/a b?c".into()),
            )])]));
            let r = &b.spans[0];
            let texts = [
                &r.http_route,
                &r.http_method,
                &r.url_path,
                &r.db_system,
                &r.db_operation,
                &r.db_query,
                &r.db_namespace,
                &r.server_address,
                &r.cache_key,
            ];
            assert_eq!(texts.iter().any(|t| **t == "/a b?c"), verbatim, "{k}");
        }
        let b = d.traces(&request(vec![span(vec![kv(
            "net.host.name",
            Value::StringValue("x".into()),
        )])]));
        assert_eq!(b.dropped_attributes, 1, "an unread key is dropped");
        let info = d.resource_from(
            keys::RESOURCE_KEYS
                .iter()
                .map(|k| (Some(k.key), Some(Attr::Str(k.name)))),
        );
        assert_eq!(
            [&*info.service, &*info.version, &*info.instance],
            keys::RESOURCE_KEYS.map(|k| k.name)
        );
    }

    #[test]
    fn stable_conventions_win_over_legacy_in_any_order() {
        let d = Decoder::default();
        let b = d.traces(&request(vec![span(vec![
            kv("db.system", Value::StringValue("memcached".into())),
            kv("db.system.name", Value::StringValue("Redis".into())),
            kv("db.statement", Value::StringValue("GET old".into())),
            kv("http.target", Value::StringValue("/p/1?x=2".into())),
        ])]));
        let row = &b.spans[0];
        assert_eq!(&*row.db_system, "redis");
        assert_eq!(&*row.db_query, "GET old");
        assert_eq!(&*row.url_path, "/p/1");
        assert_eq!(row.service(), "shop");
    }

    #[test]
    fn bad_ids_are_rejected_one_by_one_with_the_path() {
        let d = Decoder::default();
        let mut bad = span(vec![]);
        bad.trace_id = vec![1; 15];
        let b = d.traces(&request(vec![span(vec![]), bad]));
        assert_eq!(b.spans.len(), 1);
        assert_eq!(b.rejected, 1);
        let reason = b.reject_reason.unwrap();
        assert!(
            reason.contains("spans[1]") && reason.contains("traceId"),
            "{reason}"
        );
    }

    #[test]
    fn cache_outcome_strings_are_read() {
        let d = Decoder::default();
        let b = d.traces(&request(vec![span(vec![kv(
            "cache.result",
            Value::StringValue("MISS".into()),
        )])]));
        assert_eq!(b.spans[0].cache_hit, Some(false));
    }

    #[test]
    fn log_markers_by_attribute_and_body() {
        assert_eq!(
            marker_from_text("cache.flush"),
            Some(MarkerKind::CacheFlush)
        );
        assert_eq!(
            marker_from_body("Deployed version 1.4.2"),
            Some(MarkerKind::Deploy)
        );
        assert_eq!(marker_from_body("user logged in"), None);
    }
}
