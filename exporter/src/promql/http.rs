//! Prometheus's HTTP query API (v1, as Prometheus 2.42 answers it), so Grafana's stock
//! Prometheus datasource and `promtool query` can point straight at recmeter:
//! `/api/v1/query`, `/api/v1/query_range`, `/api/v1/labels`, `/api/v1/label/<name>/values`,
//! `/api/v1/series`, `/api/v1/metadata`, `/api/v1/status/buildinfo`, `/api/v1/rules` and
//! `/api/v1/query_exemplars`. Parameters come from the URL and from a form-encoded body alike
//! (Grafana POSTs). Answers and errors are Prometheus's JSON: `bad_data` (400), `execution`
//! (422) and `timeout` (503).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use promql_parser::label::{MatchOp, Matcher};
use recmeter_aggregator::telemetry::LabelledCounter;

use super::config::QueryConfig;
use super::engine::{self, Error, ErrorKind, Options};
use super::ring::Ring;
use super::rollups::{Family, Rollups};
use super::source::{Prefetched, Source};
use super::value::{Labels, METRIC_NAME, Series, Value};
use crate::state::ApiState;

/// The Prometheus API version the answers follow (`/api/v1/status/buildinfo`).
pub const PROMETHEUS_VERSION: &str = "2.42.0";

/// Largest form body read (the query text and its parameters).
const MAX_FORM_BYTES: usize = 1 << 20;

/// What the query API reads from, and its limits.
#[derive(Debug)]
pub struct QueryApi {
    pub config: QueryConfig,
    /// The request families, from the rollups.
    pub rollups: Rollups,
    /// recmeter's own families, sampled once a minute.
    pub ring: Arc<Ring>,
    /// `recmeter_queries_total{endpoint, outcome}`.
    pub counter: Arc<LabelledCounter>,
}

impl QueryApi {
    pub fn new(config: QueryConfig, rollups: Rollups, ring: Arc<Ring>) -> Self {
        let counter = rollups.aggregator.telemetry().labelled_counter(
            "recmeter_queries",
            "Requests to the Prometheus query API (/api/v1/query and the others), by endpoint and outcome (success, or the errorType answered).",
            &["endpoint", "outcome"],
        );
        for endpoint in ["query", "query_range", "series", "labels", "label_values"] {
            for outcome in ["success", "bad_data", "execution", "timeout"] {
                counter.add(&[endpoint, outcome], 0);
            }
        }
        Self {
            config,
            rollups,
            ring,
            counter,
        }
    }

    fn options(&self, timeout: Option<Duration>) -> Options {
        let timeout = timeout.map_or(self.config.timeout, |t| t.min(self.config.timeout));
        Options {
            lookback_ms: self.config.lookback_delta.as_millis() as i64,
            max_points: self.config.max_points,
            max_series: self.config.max_series,
            default_subquery_step_ms: 60_000,
            max_samples: self.config.max_samples,
            deadline: Some(Instant::now() + timeout),
        }
    }

    pub fn now_ms(&self) -> i64 {
        (self.rollups.aggregator.clock().now_nanos() / 1_000_000) as i64
    }

    /// Reads every selection ahead: the request families from the rollups, the rest from the
    /// ring. Returns the source and whether any bucket count came from HDR histograms.
    async fn prefetch(
        &self,
        selections: &[engine::Selection],
        options: &Options,
    ) -> Result<(Prefetched, bool), Error> {
        let mut source = Prefetched::default();
        let mut from_hdr = false;
        let (mut selected, mut samples) = (0usize, 0usize);
        for s in selections {
            if options.deadline.is_some_and(|d| Instant::now() > d) {
                return Err(timed_out());
            }
            let series = self
                .select(&s.matchers, s.start, s.end, &mut from_hdr)
                .await?;
            selected += series.len();
            samples += series.iter().map(|s| s.samples.len()).sum::<usize>();
            if selected > self.config.max_series {
                return Err(Error::bad_data(format!(
                    "the query selects more than {} series (query.max_series); narrow its selectors",
                    self.config.max_series
                )));
            }
            if samples > self.config.max_samples {
                return Err(Error::execution(format!(
                    "query processing would load too many samples into memory in query execution (more than {}, query.max_samples)",
                    self.config.max_samples
                )));
            }
            source.add(&s.matchers, s.start, s.end, series);
        }
        Ok((source, from_hdr))
    }

    async fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        from_hdr: &mut bool,
    ) -> Result<Vec<Series>, Error> {
        let mut series = Vec::new();
        if Family::ALL.iter().any(|f| names_match(matchers, f.name())) {
            let selected = self
                .rollups
                .select(matchers, start, end, self.config.max_samples)
                .await
                .map_err(Error::execution)?;
            *from_hdr |= selected.from_hdr && !selected.series.is_empty();
            series.extend(selected.series);
        }
        series.extend(
            self.ring
                .select(matchers, start, end)
                .map_err(Error::execution)?
                .into_iter()
                .filter(|s| !s.labels.name().starts_with("recs_")),
        );
        Ok(series)
    }
}

impl QueryApi {
    /// The exact answer of `expr` at each of `times` when it is a `histogram_quantile`
    /// recmeter answers from HDR histograms and the option is on.
    async fn exact(
        &self,
        expr: &promql_parser::parser::Expr,
        times: &[i64],
        start: i64,
        end: i64,
    ) -> Result<Option<Vec<(i64, Vec<super::value::Element>)>>, Error> {
        if !self.config.exact_histogram_quantile {
            return Ok(None);
        }
        match super::exact::plan(expr) {
            Some(plan) => {
                plan.evaluate(&self.rollups, times, start, end, self.config.max_samples)
                    .await
            }
            None => Ok(None),
        }
    }
}

/// Whether every matcher on the metric name accepts `name`.
fn names_match(matchers: &[Matcher], name: &str) -> bool {
    matchers
        .iter()
        .filter(|m| m.name == METRIC_NAME)
        .all(|m| m.is_match(name))
}

fn timed_out() -> Error {
    Error {
        kind: ErrorKind::Timeout,
        message: "query timed out in query execution".into(),
    }
}

/// The query API's routes (behind the API token, as the rest of `/api/v1`).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/rules", get(rules))
        .route(
            "/api/v1/query_exemplars",
            get(query_exemplars).post(query_exemplars),
        )
}

/// A query API error, answered as Prometheus does.
#[derive(Debug)]
pub struct ApiFailure(pub Error);

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = match self.0.kind {
            ErrorKind::BadData => StatusCode::BAD_REQUEST,
            ErrorKind::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = serde_json::json!({
            "status": "error",
            "errorType": self.0.kind.as_str(),
            "error": self.0.message,
        });
        (status, axum::Json(body)).into_response()
    }
}

impl From<Error> for ApiFailure {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

/// A request's parameters: the URL's, then the form body's (as Go's `Request.Form`).
#[derive(Debug, Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn read(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<Self, Error> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let bad = |e: serde_urlencoded::de::Error| Error::bad_data(format!("invalid form: {e}"));
        if let Some(q) = uri.query() {
            pairs.extend(serde_urlencoded::from_str::<Vec<(String, String)>>(q).map_err(bad)?);
        }
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form && !body.is_empty() {
            if body.len() > MAX_FORM_BYTES {
                return Err(Error::bad_data(format!(
                    "the form is larger than {MAX_FORM_BYTES} bytes"
                )));
            }
            // Go gives the body's values first.
            let mut from_body =
                serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).map_err(bad)?;
            from_body.extend(pairs);
            pairs = from_body;
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A time parameter, or `default` when absent.
    fn time(&self, name: &str, default: i64) -> Result<i64, Error> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) => parse_time(v).ok_or_else(|| {
                Error::bad_data(format!(
                    "invalid parameter \"{name}\": cannot parse \"{v}\" to a valid timestamp"
                ))
            }),
        }
    }

    /// A time parameter that must be given (`query_range`'s `start` and `end`).
    fn required_time(&self, name: &str) -> Result<i64, Error> {
        let v = self.get(name).unwrap_or_default();
        parse_time(v).ok_or_else(|| {
            Error::bad_data(format!(
                "invalid parameter \"{name}\": cannot parse \"{v}\" to a valid timestamp"
            ))
        })
    }

    fn duration(&self, name: &str) -> Result<Option<i64>, Error> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => parse_duration(v).map(Some).ok_or_else(|| {
                Error::bad_data(format!(
                    "invalid parameter \"{name}\": cannot parse \"{v}\" to a valid duration"
                ))
            }),
        }
    }
}

/// Prometheus's `parseTime`: Unix seconds with a fraction, or RFC 3339; milliseconds.
pub fn parse_time(v: &str) -> Option<i64> {
    if let Ok(seconds) = v.parse::<f64>() {
        if !seconds.is_finite() {
            return None;
        }
        let whole = seconds.trunc();
        let fraction = ((seconds - whole) * 1000.0).round();
        return Some(whole as i64 * 1000 + fraction as i64);
    }
    // RFC 3339 with `Z` or a numeric offset (`+02:00`), as Go's time.RFC3339Nano.
    let (local, offset_ms) = match v.len().checked_sub(6).map(|i| v.split_at(i)) {
        Some((local, zone))
            if (zone.starts_with('+') || zone.starts_with('-')) && zone.as_bytes()[3] == b':' =>
        {
            let hours: i64 = zone[1..3].parse().ok()?;
            let minutes: i64 = zone[4..].parse().ok()?;
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            (format!("{local}Z"), sign * (hours * 60 + minutes) * 60_000)
        }
        _ => (v.to_owned(), 0),
    };
    if !local.ends_with('Z') || !local.contains('T') {
        return None;
    }
    let t = humantime::parse_rfc3339(&local).ok()?;
    Some(engine::millis(t) - offset_ms)
}

/// Prometheus's `parseDuration`: seconds with a fraction, or a duration such as `5m`;
/// milliseconds.
pub fn parse_duration(v: &str) -> Option<i64> {
    if let Ok(seconds) = v.parse::<f64>() {
        let ms = (seconds * 1000.0).round();
        if !ms.is_finite() || ms.abs() > 9.2e15 {
            return None;
        }
        return Some(ms as i64);
    }
    promql_parser::util::duration::parse_duration(v)
        .ok()
        .map(|d| d.as_millis() as i64)
}

async fn read_params(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Result<Params, Error> {
    Params::read(uri, headers, body)
}

fn api(state: &ApiState) -> &QueryApi {
    &state.query
}

/// Counts the outcome of a request to `endpoint` and answers it.
fn answer(state: &ApiState, endpoint: &str, result: Result<String, Error>) -> Response {
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) => e.kind.as_str(),
    };
    api(state).counter.add(&[endpoint, outcome], 1);
    match result {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiFailure(e).into_response(),
    }
}

fn success(data: &str, warnings: &[String]) -> String {
    let mut out = String::with_capacity(data.len() + 64);
    out.push_str("{\"status\":\"success\",\"data\":");
    out.push_str(data);
    if !warnings.is_empty() {
        out.push_str(",\"warnings\":");
        out.push_str(&serde_json::to_string(warnings).unwrap_or_else(|_| "[]".into()));
    }
    out.push('}');
    out
}

const HDR_WARNING: &str = "some recs_latency_seconds_bucket and _sum samples are approximate: read from the HDR histograms (cells within 1% of the durations) of rollup rows stored before rows kept exact bucket counts";

/// An answer and its warnings.
pub type Answer<T> = (T, Vec<String>);

impl QueryApi {
    /// Evaluates `text` at `t` (milliseconds), within `timeout` (at most `query.timeout`).
    pub async fn instant_query(
        &self,
        text: &str,
        t: i64,
        timeout: Option<Duration>,
    ) -> Result<Answer<Value>, Error> {
        let options = self.options(timeout);
        let expr = engine::parse(text)?;
        if let Some(steps) = self.exact(&expr, &[t], t, t).await? {
            let elements = steps.into_iter().next().map(|(_, e)| e).unwrap_or_default();
            return Ok((Value::Vector(elements), Vec::new()));
        }
        let selections = engine::selections(&expr, t, t, &options);
        let (source, from_hdr) = self.prefetch(&selections, &options).await?;
        let value = self
            .run(move || engine::instant(&source, &expr, t, &options))
            .await?;
        Ok((value, warnings(from_hdr)))
    }

    /// Evaluates `text` at each `step` from `start` to `end` (milliseconds), within `timeout`:
    /// a matrix.
    pub async fn range_query(
        &self,
        text: &str,
        (start, end, step): (i64, i64, i64),
        timeout: Option<Duration>,
    ) -> Result<Answer<Vec<Series>>, Error> {
        if end < start {
            return Err(Error::bad_data(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        if step <= 0 {
            return Err(Error::bad_data(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if (end - start) / step > self.config.max_points as i64 {
            return Err(Error::bad_data(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                super::error::group_thousands(self.config.max_points)
            )));
        }
        let options = self.options(timeout);
        let expr = engine::parse(text)?;
        let times: Vec<i64> = (0..=(end - start) / step)
            .map(|i| start + i * step)
            .collect();
        if let Some(steps) = self.exact(&expr, &times, start, end).await? {
            let mut series: std::collections::BTreeMap<Labels, Vec<super::value::Sample>> =
                std::collections::BTreeMap::new();
            for (t, elements) in steps {
                for e in elements {
                    series
                        .entry(e.labels)
                        .or_default()
                        .push(super::value::Sample { t, v: e.v });
                }
            }
            let matrix = series
                .into_iter()
                .map(|(labels, samples)| Series { labels, samples })
                .collect();
            return Ok((matrix, Vec::new()));
        }
        let selections = engine::selections(&expr, start, end, &options);
        let (source, from_hdr) = self.prefetch(&selections, &options).await?;
        let matrix = self
            .run(move || engine::range(&source, &expr, start, end, step, &options))
            .await?;
        Ok((matrix, warnings(from_hdr)))
    }

    /// Runs CPU-bound evaluation on the query runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.rollups
            .engine
            .run_work(work)
            .await
            .map_err(|e| Error::execution(e.to_string()))?
    }
}

fn warnings(from_hdr: bool) -> Vec<String> {
    if from_hdr {
        vec![HDR_WARNING.to_owned()]
    } else {
        Vec::new()
    }
}

fn query_text(params: &Params) -> Result<String, Error> {
    params
        .get("query")
        .filter(|q| !q.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Error::bad_data("invalid parameter \"query\": query is empty"))
}

async fn query(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = read_params(&uri, &headers, &body).await?;
        let api = api(&state);
        let text = query_text(&params)?;
        let t = params.time("time", api.now_ms())?;
        let timeout = params.duration("timeout")?.map(ms);
        let (value, warnings) = api.instant_query(&text, t, timeout).await?;
        let mut data = String::new();
        write_value(&mut data, &value, t);
        Ok(success(&data, &warnings))
    }
    .await;
    answer(&state, "query", result)
}

async fn query_range(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = read_params(&uri, &headers, &body).await?;
        let api = api(&state);
        let text = query_text(&params)?;
        let start = params.required_time("start")?;
        let end = params.required_time("end")?;
        let step = params.duration("step")?.ok_or_else(|| {
            Error::bad_data("invalid parameter \"step\": cannot parse \"\" to a valid duration")
        })?;
        let timeout = params.duration("timeout")?.map(ms);
        let (matrix, warnings) = api.range_query(&text, (start, end, step), timeout).await?;
        let mut data = String::new();
        write_value(&mut data, &Value::Matrix(matrix), end);
        Ok(success(&data, &warnings))
    }
    .await;
    answer(&state, "query_range", result)
}

fn ms(d: i64) -> Duration {
    Duration::from_millis(d.max(0) as u64)
}

/// The series `match[]` selects from `start` to `end`, labels only.
async fn matched_series(state: &ApiState, params: &Params) -> Result<Vec<Labels>, Error> {
    let api = api(state);
    let now = api.now_ms();
    // Prometheus's defaults: all of time. recmeter's history is at most what the store keeps.
    let start = params.time("start", now - 24 * 3_600_000)?;
    let end = params.time("end", now)?;
    let selectors = params.all("match[]");
    let mut all: Vec<Vec<Matcher>> = Vec::new();
    for s in &selectors {
        let expr = promql_parser::parser::parse(s)
            .map_err(|e| Error::bad_data(format!("invalid parameter \"match[]\": {e}")))?;
        let promql_parser::parser::Expr::VectorSelector(v) = expr else {
            return Err(Error::bad_data(format!(
                "invalid parameter \"match[]\": {s} is not a series selector"
            )));
        };
        let mut matchers = v.matchers.matchers.clone();
        if let Some(name) = &v.name {
            matchers.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
        }
        all.push(matchers);
    }
    if all.is_empty() {
        // Every series (the labels endpoints allow no match[]).
        all.push(Vec::new());
    }
    let mut out = BTreeSet::new();
    for matchers in &all {
        // The request families' series are those held, whatever the range: listing them
        // reads no row.
        out.extend(api.rollups.label_sets(matchers));
        out.extend(
            api.ring
                .select(matchers, start, end)
                .map_err(Error::execution)?
                .into_iter()
                .map(|s| s.labels)
                .filter(|l| !l.name().starts_with("recs_")),
        );
    }
    Ok(out.into_iter().collect())
}

fn limit(params: &Params) -> Result<Option<usize>, Error> {
    match params.get("limit") {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(Error::bad_data(format!(
                "invalid parameter \"limit\": cannot parse \"{v}\": must be a positive integer"
            ))),
        },
    }
}

async fn series(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = read_params(&uri, &headers, &body).await?;
        if params.all("match[]").is_empty() {
            return Err(Error::bad_data("no match[] parameter provided"));
        }
        let limit = limit(&params)?;
        let mut list = matched_series(&state, &params).await?;
        if let Some(n) = limit {
            list.truncate(n);
        }
        let mut data = String::from("[");
        for (i, labels) in list.iter().enumerate() {
            if i > 0 {
                data.push(',');
            }
            write_labels(&mut data, labels);
        }
        data.push(']');
        Ok(success(&data, &[]))
    }
    .await;
    answer(&state, "series", result)
}

async fn labels(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = read_params(&uri, &headers, &body).await?;
        let limit = limit(&params)?;
        let names: BTreeSet<String> = matched_series(&state, &params)
            .await?
            .iter()
            .flat_map(|l| l.iter().map(|(n, _)| n.to_owned()).collect::<Vec<_>>())
            .collect();
        Ok(success(&string_list(names, limit), &[]))
    }
    .await;
    answer(&state, "labels", result)
}

async fn label_values(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let params = read_params(&uri, &headers, &Bytes::new()).await?;
        if !valid_label_name(&name) {
            return Err(Error::bad_data(format!("invalid label name: \"{name}\"")));
        }
        let limit = limit(&params)?;
        let values: BTreeSet<String> = matched_series(&state, &params)
            .await?
            .iter()
            .map(|l| l.get(&name).to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        Ok(success(&string_list(values, limit), &[]))
    }
    .await;
    answer(&state, "label_values", result)
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn string_list(items: BTreeSet<String>, limit: Option<usize>) -> String {
    let items: Vec<String> = match limit {
        Some(n) => items.into_iter().take(n).collect(),
        None => items.into_iter().collect(),
    };
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}

/// The request families' metadata, as `/metrics` describes them.
const ROLLUP_METADATA: [(&str, &str, &str); 3] = [
    (
        "recs_latency_seconds",
        "histogram",
        "Request latency, counted exactly at ingest into fixed buckets.",
    ),
    (
        "recs_requests_total",
        "counter",
        "Requests counted, by outcome (span status).",
    ),
    (
        "recs_recommendations_total",
        "counter",
        "Recommendations served.",
    ),
];

async fn metadata(State(state): State<ApiState>, uri: Uri) -> Response {
    let params = Params::read(&uri, &HeaderMap::new(), &[]).unwrap_or_default();
    let wanted = params.get("metric").filter(|m| !m.is_empty());
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&n| n > 0);
    let mut map = serde_json::Map::new();
    let mut add = |name: &str, kind: &str, help: &str| {
        if wanted.is_some_and(|w| w != name) || limit.is_some_and(|n| map.len() >= n) {
            return;
        }
        map.insert(
            name.to_owned(),
            serde_json::json!([{ "type": kind, "help": help, "unit": "" }]),
        );
    };
    for (name, kind, help) in ROLLUP_METADATA {
        add(name, kind, help);
    }
    for (name, m) in api(&state).ring.metadata() {
        if !name.starts_with("recs_") {
            add(&name, &m.kind, &m.help);
        }
    }
    let data = serde_json::Value::Object(map).to_string();
    (
        [(header::CONTENT_TYPE, "application/json")],
        success(&data, &[]),
    )
        .into_response()
}

async fn buildinfo() -> Response {
    let data = serde_json::json!({
        "version": PROMETHEUS_VERSION,
        "revision": format!("recmeter {}", env!("CARGO_PKG_VERSION")),
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        success(&data.to_string(), &[]),
    )
        .into_response()
}

async fn rules() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        success("{\"groups\":[]}", &[]),
    )
        .into_response()
}

async fn query_exemplars(uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let result = (|| {
        let params = Params::read(&uri, &headers, &body)?;
        // Grafana sends milliseconds; both are only checked to be times.
        params.time("start", 0)?;
        params.time("end", 0)?;
        Ok(success("[]", &[]))
    })();
    match result {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiFailure(e).into_response(),
    }
}

/// A time as Prometheus writes it: seconds, with the milliseconds after a point when any.
fn write_time(out: &mut String, t: i64) {
    let (sign, t) = if t < 0 { ("-", -t) } else { ("", t) };
    let _ = write!(out, "{sign}{}", t / 1000);
    let fraction = t % 1000;
    if fraction != 0 {
        let _ = write!(out, ".{fraction:03}");
    }
}

/// A value as Go's `strconv.FormatFloat(v, 'f', -1, 64)` writes it.
fn write_number(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

fn write_point(out: &mut String, t: i64, v: f64) {
    out.push('[');
    write_time(out, t);
    out.push_str(",\"");
    write_number(out, v);
    out.push_str("\"]");
}

fn write_labels(out: &mut String, labels: &Labels) {
    out.push('{');
    for (i, (n, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(n).unwrap_or_default());
        out.push(':');
        out.push_str(&serde_json::to_string(v).unwrap_or_default());
    }
    out.push('}');
}

/// `{"resultType":…,"result":…}` of `value` evaluated at `t`.
fn write_value(out: &mut String, value: &Value, t: i64) {
    let _ = write!(
        out,
        "{{\"resultType\":\"{}\",\"result\":",
        value.type_name()
    );
    match value {
        Value::Scalar(v) => write_point(out, t, *v),
        Value::String(s) => {
            out.push('[');
            write_time(out, t);
            out.push(',');
            out.push_str(&serde_json::to_string(s).unwrap_or_default());
            out.push(']');
        }
        Value::Vector(elements) => {
            out.push('[');
            for (i, e) in elements.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &e.labels);
                out.push_str(",\"value\":");
                write_point(out, t, e.v);
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push('[');
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.labels);
                out.push_str(",\"values\":[");
                for (j, p) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_point(out, p.t, p.v);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_values_and_durations_read_and_write_as_prometheus_does() {
        assert_eq!(parse_time("4"), Some(4000));
        assert_eq!(parse_time("1435781451.781"), Some(1_435_781_451_781));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Some(1_435_781_451_781)
        );
        assert_eq!(
            parse_time("2015-07-01T22:10:51.781+02:00"),
            Some(1_435_781_451_781)
        );
        assert_eq!(parse_time("2015-07-01 20:10:51"), None);
        assert_eq!(parse_time("x"), None);
        assert_eq!(parse_duration("15"), Some(15_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000));
        assert_eq!(parse_duration("0.5"), Some(500));
        assert_eq!(parse_duration("y"), None);
        let mut s = String::new();
        write_value(&mut s, &Value::Scalar(2.0), 4000);
        assert_eq!(s, r#"{"resultType":"scalar","result":[4,"2"]}"#);
        let mut s = String::new();
        write_point(&mut s, 1_435_781_451_781, f64::NEG_INFINITY);
        write_point(&mut s, -1500, 0.1);
        write_point(&mut s, 5, f64::NAN);
        assert_eq!(s, r#"[1435781451.781,"-Inf"][-1.500,"0.1"][0.005,"NaN"]"#);
        assert_eq!(super::super::error::group_thousands(11_000), "11,000");
        assert_eq!(super::super::error::group_thousands(999), "999");
    }
}
