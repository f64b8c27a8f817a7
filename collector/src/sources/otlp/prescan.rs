//! A pass over an OTLP request's bytes (protobuf, or JSON) before it is decoded: it counts the spans
//! or data points and adds up what decoding would allocate, without allocating anything, so a
//! small body that would decode into gigabytes (millions of empty spans, attributes or values
//! at two bytes each) is refused before `prost` builds it. It reads the OTLP schema's field
//! numbers, skips unknown fields as `prost` does, and refuses what `prost` would refuse to
//! read (bad lengths, wire types or varints, nesting past 100).

use std::mem::size_of;

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, SummaryDataPoint, exponential_histogram_data_point,
    summary_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

/// Most bytes a request may decode into, as counted here: the structs of its spans or points,
/// attributes, events and values, and their strings. A `Vec`'s first allocation holds four
/// elements, so a request of single-element lists takes up to four times what is counted;
/// the budget is a quarter of the 512 MiB a request may take at worst, less the body (ADR 014).
pub const MAX_DECODED_BYTES: u64 = 96 << 20;

/// As `prost`'s recursion limit.
const MAX_DEPTH: usize = 100;

/// What a request holds, as far as the limits go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    /// Spans, or metric data points.
    pub items: u64,
    /// What decoding would allocate, approximately (the `Vec`s' spare capacity aside).
    pub decoded_bytes: u64,
}

/// Why a request is refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// More spans or points than the limit.
    #[error("the request holds {items} {what}, more than {limit} ({key})")]
    TooMany {
        items: u64,
        what: &'static str,
        limit: u64,
        key: &'static str,
    },
    /// It would decode into more than [`MAX_DECODED_BYTES`].
    #[error(
        "the request would take more than {} MiB to decode ({} MiB counted: many tiny attributes, events or values); send fewer items per request",
        MAX_DECODED_BYTES >> 20,
        .0 >> 20
    )]
    TooBig(u64),
    /// Not a well-formed protobuf message.
    #[error("invalid OTLP protobuf: {0}")]
    Malformed(&'static str),
    /// Not well-formed JSON.
    #[error("invalid OTLP JSON: {0}")]
    Json(String),
}

impl Refused {
    /// Whether the request is too large (413) rather than undecodable (400).
    pub fn is_too_large(&self) -> bool {
        !matches!(self, Refused::Malformed(_) | Refused::Json(_))
    }
}

/// Scans an `ExportTraceServiceRequest`, refusing more than `max_spans` spans.
pub fn traces(body: &[u8], max_spans: u64) -> Result<Scan, Refused> {
    scan(
        body,
        Ty::TraceRequest,
        max_spans,
        "spans",
        "otlp.max_spans_per_request",
    )
}

/// Scans an `ExportMetricsServiceRequest`, refusing more than `max_points` data points.
pub fn metrics(body: &[u8], max_points: u64) -> Result<Scan, Refused> {
    scan(
        body,
        Ty::MetricsRequest,
        max_points,
        "data points",
        "otlp.max_points_per_request",
    )
}

/// Scans an OTLP/JSON trace request: spans are the elements of `spans` arrays.
pub fn traces_json(body: &[u8], max_spans: u64) -> Result<Scan, Refused> {
    let scan = json::scan(body, &["spans"])?;
    check(scan, max_spans, "spans", "otlp.max_spans_per_request")
}

/// Scans an OTLP/JSON metrics request: points are the elements of `dataPoints` arrays.
pub fn metrics_json(body: &[u8], max_points: u64) -> Result<Scan, Refused> {
    let scan = json::scan(body, &["dataPoints", "data_points"])?;
    check(
        scan,
        max_points,
        "data points",
        "otlp.max_points_per_request",
    )
}

fn scan(
    body: &[u8],
    ty: Ty,
    limit: u64,
    what: &'static str,
    key: &'static str,
) -> Result<Scan, Refused> {
    // First only the path to the items, each item skipped by its length: the count is exact,
    // and no body decodes into more than `WORST_BYTES_PER_WIRE_BYTE` per byte beyond its
    // items' structs. Only when that bound is past the budget is every field walked, for the
    // real figure. Most requests (under about a megabyte) never need the second pass.
    let mut shallow = Scan::default();
    walk(body, ty, 0, &mut shallow, true)?;
    let items = shallow.items;
    let item_size = match ty {
        Ty::TraceRequest => Ty::Span.size(),
        _ => Ty::HistogramDataPoint
            .size()
            .max(Ty::ExponentialDataPoint.size()),
    };
    let bound = items
        .saturating_mul(item_size)
        .saturating_add((body.len() as u64).saturating_mul(worst_bytes_per_wire_byte()));
    if items > limit || bound <= MAX_DECODED_BYTES {
        shallow.decoded_bytes = bound;
        return check(shallow, limit, what, key);
    }
    let mut scan = Scan::default();
    walk(body, ty, 0, &mut scan, false)?;
    check(scan, limit, what, key)
}

/// The most a wire byte inside an item can decode into: an empty element of a repeated message
/// field takes two bytes (its tag and a zero length) and decodes into a whole struct.
fn worst_bytes_per_wire_byte() -> u64 {
    Ty::ALL
        .iter()
        .map(|t| t.size())
        .max()
        .unwrap_or(0)
        .div_ceil(2)
        .max(8)
}

fn check(scan: Scan, limit: u64, what: &'static str, key: &'static str) -> Result<Scan, Refused> {
    if scan.items > limit {
        return Err(Refused::TooMany {
            items: scan.items,
            what,
            limit,
            key,
        });
    }
    if scan.decoded_bytes > MAX_DECODED_BYTES {
        return Err(Refused::TooBig(scan.decoded_bytes));
    }
    Ok(scan)
}

/// The OTLP message types whose fields allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    TraceRequest,
    ResourceSpans,
    ScopeSpans,
    Span,
    Event,
    Link,
    Status,
    Resource,
    Scope,
    EntityRef,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    MetricsRequest,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    /// Gauge and Sum: `data_points` of `NumberDataPoint`.
    NumberPoints,
    HistogramPoints,
    ExponentialPoints,
    SummaryPoints,
    NumberDataPoint,
    HistogramDataPoint,
    ExponentialDataPoint,
    Buckets,
    SummaryDataPoint,
    ValueAtQuantile,
    Exemplar,
}

/// How a field decodes.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// A message; `repeated` ones take a slot of their type's size in a `Vec` each, and those
    /// marked `item` are what the request limit counts.
    Message { ty: Ty, repeated: bool, item: bool },
    /// A string or bytes: its length on the heap (plus a `String` if repeated).
    Bytes { repeated: bool },
    /// A repeated number (packed or not), 8 bytes each.
    Numbers,
}

const fn msg(ty: Ty) -> Field {
    Field::Message {
        ty,
        repeated: false,
        item: false,
    }
}

const fn list(ty: Ty) -> Field {
    Field::Message {
        ty,
        repeated: true,
        item: false,
    }
}

const fn items(ty: Ty) -> Field {
    Field::Message {
        ty,
        repeated: true,
        item: true,
    }
}

const BYTES: Field = Field::Bytes { repeated: false };

impl Ty {
    const ALL: [Ty; 29] = [
        Ty::TraceRequest,
        Ty::ResourceSpans,
        Ty::ScopeSpans,
        Ty::Span,
        Ty::Event,
        Ty::Link,
        Ty::Status,
        Ty::Resource,
        Ty::Scope,
        Ty::EntityRef,
        Ty::KeyValue,
        Ty::AnyValue,
        Ty::ArrayValue,
        Ty::KeyValueList,
        Ty::MetricsRequest,
        Ty::ResourceMetrics,
        Ty::ScopeMetrics,
        Ty::Metric,
        Ty::NumberPoints,
        Ty::HistogramPoints,
        Ty::ExponentialPoints,
        Ty::SummaryPoints,
        Ty::NumberDataPoint,
        Ty::HistogramDataPoint,
        Ty::ExponentialDataPoint,
        Ty::Buckets,
        Ty::SummaryDataPoint,
        Ty::ValueAtQuantile,
        Ty::Exemplar,
    ];

    /// Whether the counted items (spans, data points) are inside one of these.
    fn leads_to_items(self) -> bool {
        matches!(
            self,
            Ty::ResourceSpans
                | Ty::ScopeSpans
                | Ty::ResourceMetrics
                | Ty::ScopeMetrics
                | Ty::Metric
                | Ty::NumberPoints
                | Ty::HistogramPoints
                | Ty::ExponentialPoints
                | Ty::SummaryPoints
        )
    }

    /// The decoded size of one of these, as a `Vec` element.
    fn size(self) -> u64 {
        (match self {
            Ty::TraceRequest | Ty::MetricsRequest => 0,
            Ty::ResourceSpans => size_of::<ResourceSpans>(),
            Ty::ScopeSpans => size_of::<ScopeSpans>(),
            Ty::Span => size_of::<Span>(),
            Ty::Event => size_of::<span::Event>(),
            Ty::Link => size_of::<span::Link>(),
            Ty::Status => size_of::<Status>(),
            Ty::Resource => size_of::<Resource>(),
            Ty::Scope => size_of::<InstrumentationScope>(),
            Ty::EntityRef => size_of::<EntityRef>(),
            Ty::KeyValue => size_of::<KeyValue>(),
            Ty::AnyValue => size_of::<AnyValue>(),
            Ty::ArrayValue => size_of::<ArrayValue>(),
            Ty::KeyValueList => size_of::<KeyValueList>(),
            Ty::ResourceMetrics => size_of::<ResourceMetrics>(),
            Ty::ScopeMetrics => size_of::<ScopeMetrics>(),
            Ty::Metric => size_of::<Metric>(),
            Ty::NumberPoints | Ty::HistogramPoints | Ty::ExponentialPoints | Ty::SummaryPoints => 0,
            Ty::NumberDataPoint => size_of::<NumberDataPoint>(),
            Ty::HistogramDataPoint => size_of::<HistogramDataPoint>(),
            Ty::ExponentialDataPoint => size_of::<ExponentialHistogramDataPoint>(),
            Ty::Buckets => size_of::<exponential_histogram_data_point::Buckets>(),
            Ty::SummaryDataPoint => size_of::<SummaryDataPoint>(),
            Ty::ValueAtQuantile => size_of::<summary_data_point::ValueAtQuantile>(),
            Ty::Exemplar => size_of::<Exemplar>(),
        }) as u64
    }

    /// Field `number` of this type, where it allocates; `None` for the rest (scalars, unknown
    /// fields), which are only checked to be well-formed.
    fn field(self, number: u32) -> Option<Field> {
        Some(match (self, number) {
            (Ty::TraceRequest, 1) => list(Ty::ResourceSpans),
            (Ty::ResourceSpans, 1) | (Ty::ResourceMetrics, 1) => msg(Ty::Resource),
            (Ty::ResourceSpans, 2) => list(Ty::ScopeSpans),
            (Ty::ScopeSpans, 1) | (Ty::ScopeMetrics, 1) => msg(Ty::Scope),
            (Ty::ScopeSpans, 2) => items(Ty::Span),
            (Ty::Span, 9) | (Ty::Event, 3) | (Ty::Link, 4) => list(Ty::KeyValue),
            (Ty::Span, 11) => list(Ty::Event),
            (Ty::Span, 13) => list(Ty::Link),
            (Ty::Span, 15) => msg(Ty::Status),
            (Ty::Span, 1..=5) | (Ty::Event, 2) | (Ty::Link, 1..=3) | (Ty::Status, 2) => BYTES,
            (Ty::Resource, 1) | (Ty::Scope, 3) | (Ty::KeyValueList, 1) => list(Ty::KeyValue),
            (Ty::Resource, 3) => list(Ty::EntityRef),
            (Ty::Scope, 1 | 2) | (Ty::EntityRef, 1 | 2) | (Ty::KeyValue, 1) => BYTES,
            (Ty::EntityRef, 3 | 4) => Field::Bytes { repeated: true },
            (Ty::KeyValue, 2) => msg(Ty::AnyValue),
            (Ty::AnyValue, 1 | 7) => BYTES,
            (Ty::AnyValue, 5) => msg(Ty::ArrayValue),
            (Ty::AnyValue, 6) => msg(Ty::KeyValueList),
            (Ty::ArrayValue, 1) => list(Ty::AnyValue),
            (Ty::ResourceSpans | Ty::ScopeSpans | Ty::ResourceMetrics | Ty::ScopeMetrics, 3) => {
                BYTES
            }
            (Ty::MetricsRequest, 1) => list(Ty::ResourceMetrics),
            (Ty::ResourceMetrics, 2) => list(Ty::ScopeMetrics),
            (Ty::ScopeMetrics, 2) => list(Ty::Metric),
            (Ty::Metric, 1..=3) => BYTES,
            (Ty::Metric, 12) => list(Ty::KeyValue),
            (Ty::Metric, 5 | 7) => msg(Ty::NumberPoints),
            (Ty::Metric, 9) => msg(Ty::HistogramPoints),
            (Ty::Metric, 10) => msg(Ty::ExponentialPoints),
            (Ty::Metric, 11) => msg(Ty::SummaryPoints),
            (Ty::NumberPoints, 1) => items(Ty::NumberDataPoint),
            (Ty::HistogramPoints, 1) => items(Ty::HistogramDataPoint),
            (Ty::ExponentialPoints, 1) => items(Ty::ExponentialDataPoint),
            (Ty::SummaryPoints, 1) => items(Ty::SummaryDataPoint),
            (Ty::NumberDataPoint, 7)
            | (Ty::HistogramDataPoint, 9)
            | (Ty::ExponentialDataPoint, 1)
            | (Ty::SummaryDataPoint, 7)
            | (Ty::Exemplar, 7) => list(Ty::KeyValue),
            (Ty::NumberDataPoint, 5)
            | (Ty::HistogramDataPoint, 8)
            | (Ty::ExponentialDataPoint, 11) => list(Ty::Exemplar),
            (Ty::HistogramDataPoint, 6 | 7) | (Ty::Buckets, 2) => Field::Numbers,
            (Ty::ExponentialDataPoint, 8 | 9) => msg(Ty::Buckets),
            (Ty::SummaryDataPoint, 6) => list(Ty::ValueAtQuantile),
            (Ty::Exemplar, 4 | 5) => BYTES,
            _ => return None,
        })
    }
}

/// Walks one message of type `ty`, adding to `scan`.
fn walk(
    mut bytes: &[u8],
    ty: Ty,
    depth: usize,
    scan: &mut Scan,
    shallow: bool,
) -> Result<(), Refused> {
    if depth > MAX_DEPTH {
        return Err(Refused::Malformed("nested too deeply"));
    }
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = u32::try_from(key >> 3).map_err(|_| Refused::Malformed("field number"))?;
        if number == 0 {
            return Err(Refused::Malformed("field number 0"));
        }
        let wire = key & 7;
        let field = ty.field(number);
        match wire {
            0 => {
                varint(&mut bytes)?;
                if let Some(Field::Numbers) = field {
                    scan.decoded_bytes += 8;
                }
            }
            1 | 5 => {
                let width = if wire == 1 { 8 } else { 4 };
                bytes = bytes
                    .get(width..)
                    .ok_or(Refused::Malformed("a fixed-width value cut short"))?;
                if let Some(Field::Numbers) = field {
                    scan.decoded_bytes += 8;
                }
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?)
                    .map_err(|_| Refused::Malformed("length"))?;
                let (value, rest) = bytes
                    .split_at_checked(len)
                    .ok_or(Refused::Malformed("a length past the end of its message"))?;
                bytes = rest;
                match field {
                    Some(Field::Message { ty, repeated, item }) => {
                        if repeated {
                            scan.decoded_bytes += ty.size();
                        }
                        if item {
                            scan.items += 1;
                        }
                        if !shallow || ty.leads_to_items() {
                            walk(value, ty, depth + 1, scan, shallow)?;
                        }
                    }
                    Some(Field::Bytes { repeated }) => {
                        scan.decoded_bytes += len as u64 + if repeated { 24 } else { 0 };
                    }
                    // Packed: fixed64 and doubles take 8 bytes each, varints end in a byte
                    // below 0x80.
                    Some(Field::Numbers) => {
                        let n = if ty == Ty::Buckets {
                            value.iter().filter(|&&b| b < 0x80).count()
                        } else {
                            len / 8
                        };
                        scan.decoded_bytes += 8 * n as u64;
                    }
                    None => {}
                }
            }
            3 => {
                // A group (proto2), which OTLP never uses: skipped as prost skips it.
                bytes = skip_group(bytes, number, depth + 1)?;
            }
            _ => return Err(Refused::Malformed("wire type")),
        }
    }
    Ok(())
}

/// Skips a group's fields up to its end tag; returns what follows.
fn skip_group(mut bytes: &[u8], number: u32, depth: usize) -> Result<&[u8], Refused> {
    if depth > MAX_DEPTH {
        return Err(Refused::Malformed("nested too deeply"));
    }
    loop {
        let key = varint(&mut bytes)?;
        let (inner, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                varint(&mut bytes)?;
            }
            1 | 5 => {
                let width = if wire == 1 { 8 } else { 4 };
                bytes = bytes
                    .get(width..)
                    .ok_or(Refused::Malformed("a fixed-width value cut short"))?;
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?)
                    .map_err(|_| Refused::Malformed("length"))?;
                bytes = bytes
                    .get(len..)
                    .ok_or(Refused::Malformed("a length past the end of its message"))?;
            }
            3 => bytes = skip_group(bytes, inner, depth + 1)?,
            4 if inner == number => return Ok(bytes),
            _ => return Err(Refused::Malformed("unbalanced group")),
        }
    }
}

/// Reads a varint of at most 10 bytes.
fn varint(bytes: &mut &[u8]) -> Result<u64, Refused> {
    if let Some((&b, rest)) = bytes.split_first()
        && b < 0x80
    {
        *bytes = rest;
        return Ok(u64::from(b));
    }
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *bytes = &bytes[i + 1..];
            return Ok(value);
        }
    }
    Err(Refused::Malformed(
        "a varint cut short or longer than 10 bytes",
    ))
}

/// OTLP/JSON, walked with serde without building anything: the schema's field names are not
/// needed beyond the arrays that hold the counted items, and every JSON value is charged as a
/// decoded struct of [`json::NODE_BYTES`] (a span's attribute, an array's value), strings by
/// their length.
mod json {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    use super::{Refused, Scan};

    /// What one JSON value is charged: about a decoded `KeyValue` or `AnyValue` and its slot.
    pub const NODE_BYTES: u64 = 64;

    pub fn scan(body: &[u8], item_keys: &'static [&'static str]) -> Result<Scan, Refused> {
        let mut scan = Scan::default();
        let mut de = serde_json::Deserializer::from_slice(body);
        Walk {
            scan: &mut scan,
            item_keys,
            items: false,
            copies: 1,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| Refused::Json(e.to_string()))?;
        Ok(scan)
    }

    struct Walk<'a> {
        scan: &'a mut Scan,
        item_keys: &'static [&'static str],
        /// This value is an array whose elements are the counted items.
        items: bool,
        /// How many times serde holds this value: `AnyValue` is decoded through a flattened
        /// enum, which buffers its content, so each enclosing `arrayValue` or `kvlistValue`
        /// holds one more copy of what is inside it while it is decoded.
        copies: u64,
    }

    impl Walk<'_> {
        fn charge(&mut self, bytes: u64) {
            self.scan.decoded_bytes = self
                .scan
                .decoded_bytes
                .saturating_add(bytes.saturating_mul(self.copies));
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
            de.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an OTLP JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            self.charge(NODE_BYTES);
            while let Some(key) = map.next_key_seed(Key(self.item_keys))? {
                map.next_value_seed(Walk {
                    scan: &mut *self.scan,
                    item_keys: self.item_keys,
                    items: key == KeyKind::Items,
                    copies: self.copies + u64::from(key == KeyKind::Nested),
                })?;
            }
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            self.charge(NODE_BYTES);
            while seq
                .next_element_seed(Walk {
                    scan: &mut *self.scan,
                    item_keys: self.item_keys,
                    items: false,
                    copies: self.copies,
                })?
                .is_some()
            {
                if self.items {
                    self.scan.items += 1;
                }
            }
            Ok(())
        }

        fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
            self.charge(NODE_BYTES + v.len() as u64);
            Ok(())
        }

        fn visit_bool<E>(mut self, _: bool) -> Result<(), E> {
            self.charge(NODE_BYTES);
            Ok(())
        }

        fn visit_i64<E>(mut self, _: i64) -> Result<(), E> {
            self.charge(NODE_BYTES);
            Ok(())
        }

        fn visit_u64<E>(mut self, _: u64) -> Result<(), E> {
            self.charge(NODE_BYTES);
            Ok(())
        }

        fn visit_f64<E>(mut self, _: f64) -> Result<(), E> {
            self.charge(NODE_BYTES);
            Ok(())
        }

        fn visit_unit<E>(mut self) -> Result<(), E> {
            self.charge(NODE_BYTES);
            Ok(())
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum KeyKind {
        /// The array of counted items.
        Items,
        /// A nested `AnyValue` container.
        Nested,
        Other,
    }

    /// A map key: whether it names the counted items' array.
    struct Key(&'static [&'static str]);

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = KeyKind;

        fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<KeyKind, D::Error> {
            de.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key {
        type Value = KeyKind;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a field name")
        }

        fn visit_str<E>(self, v: &str) -> Result<KeyKind, E> {
            Ok(if self.0.contains(&v) {
                KeyKind::Items
            } else if matches!(
                v,
                "arrayValue" | "array_value" | "kvlistValue" | "kvlist_value"
            ) {
                KeyKind::Nested
            } else {
                KeyKind::Other
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::metrics::v1::{Histogram, metric};
    use prost::Message;

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
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
                    attributes: vec![kv(
                        "service.name",
                        any_value::Value::StringValue("a".into()),
                    )],
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

    #[test]
    fn counts_spans_and_what_they_decode_into() {
        let span = Span {
            name: "GET /recs".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![
                kv("http.route", any_value::Value::StringValue("/recs".into())),
                kv("recs.count", any_value::Value::IntValue(3)),
            ],
            events: vec![span::Event::default()],
            ..Default::default()
        };
        let body = request(vec![span; 3]).encode_to_vec();
        let scan = traces(&body, 10).unwrap();
        assert_eq!(scan.items, 3);
        let per_span = Ty::Span.size() + 2 * Ty::KeyValue.size() + Ty::Event.size();
        // A small body is bounded by its worst case, not walked field by field.
        assert!(scan.decoded_bytes > 3 * per_span, "{scan:?}");
        assert_eq!(
            scan.decoded_bytes,
            3 * Ty::Span.size() + body.len() as u64 * worst_bytes_per_wire_byte()
        );
        let e = traces(&body, 2).unwrap_err();
        assert!(
            e.is_too_large() && e.to_string().contains("otlp.max_spans_per_request"),
            "{e}"
        );
    }

    #[test]
    fn empty_spans_and_tiny_values_are_refused_before_decoding() {
        // 8 million empty spans: 16 MB on the wire, gigabytes decoded.
        let mut spans = Vec::with_capacity(16 << 20);
        for _ in 0..(8 << 20) {
            spans.extend_from_slice(&[0x12, 0x00]);
        }
        let body = wrap(0x0a, &wrap(0x12, &spans));
        let e = traces(&body, 65_536).unwrap_err();
        assert!(
            matches!(e, Refused::TooMany { items, .. } if items == 8 << 20),
            "{e}"
        );
        // One span holding millions of empty attributes: within the span limit, too big.
        let mut attributes = Vec::new();
        for _ in 0..(4 << 20) {
            attributes.extend_from_slice(&[0x4a, 0x00]);
        }
        let body = wrap(0x0a, &wrap(0x12, &wrap(0x12, &attributes)));
        let e = traces(&body, 65_536).unwrap_err();
        assert!(matches!(e, Refused::TooBig(_)), "{e}");
    }

    /// `content` as a length-delimited field with tag byte `tag`.
    fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let mut n = content.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn counts_data_points_of_every_kind() {
        let point = HistogramDataPoint {
            bucket_counts: vec![1, 2, 3],
            explicit_bounds: vec![0.1, 0.2],
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "recs.latency".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![point; 5],
                            aggregation_temporality: 1,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = request.encode_to_vec();
        let scan = metrics(&body, 5).unwrap();
        assert_eq!(scan.items, 5);
        assert!(scan.decoded_bytes >= 5 * (Ty::HistogramDataPoint.size() + 40));
        assert!(metrics(&body, 4).is_err());
    }

    #[test]
    fn json_counts_spans_points_and_values() {
        let spans = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
            vec!["{}"; 100].join(",")
        );
        assert_eq!(traces_json(spans.as_bytes(), 100).unwrap().items, 100);
        let e = traces_json(spans.as_bytes(), 99).unwrap_err();
        assert!(e.is_too_large(), "{e}");
        let points = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"histogram":{"dataPoints":[{"count":"1"},{"count":"2"}]}}]}]}]}"#;
        assert_eq!(metrics_json(points.as_bytes(), 10).unwrap().items, 2);
        let values = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{}]}}}}]}}"#,
            vec!["{}"; 3_000_000].join(",")
        );
        assert!(matches!(
            traces_json(values.as_bytes(), 10),
            Err(Refused::TooBig(_))
        ));
        assert!(matches!(
            traces_json(b"{\"resourceSpans\": [", 10),
            Err(Refused::Json(_))
        ));
    }

    #[test]
    fn malformed_bodies_are_refused_as_prost_refuses_them() {
        for body in [
            &[0x0a, 0x05, 0x00][..],
            &[0x0a],
            &[0x0f],
            &[0x08, 0xff, 0xff],
        ] {
            let ours = traces(body, 10);
            let prost = ExportTraceServiceRequest::decode(body);
            assert!(
                ours.is_err() && prost.is_err(),
                "{body:?}: {ours:?} {prost:?}"
            );
        }
    }
}
