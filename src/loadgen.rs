//! `recmeter loadgen`: drives a recmeter (or any OTLP receiver) with realistic recommendation
//! spans and reports what got through. Requests are encoded ahead of time (refreshed every
//! second so span times stay current), so the generator spends its CPU on sending, not on
//! encoding. With `--server-pid` it also reports the server's CPU time from the first request
//! until the server has counted every accepted span, and spans per server CPU-second.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;
use recmeter_collector::sources::otlp::synthetic;
use tokio::sync::Mutex;

/// Wire protocol of the generated load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadProtocol {
    /// OTLP/gRPC `TraceService/Export`.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProto,
    /// OTLP/HTTP with JSON bodies.
    HttpJson,
}

/// `recmeter loadgen` options.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Spans per second to offer; 0 sends as fast as the server answers.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// How long to send (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Spans in each export request.
    #[arg(long, default_value_t = 100)]
    pub spans_per_request: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "grpc")]
    pub protocol: LoadProtocol,
    /// Compress requests with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Receiver address: http://HOST:4317 for gRPC, http://HOST:4318/v1/traces for HTTP.
    /// Default: the local recmeter's port for the protocol.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Distinct series (endpoints) the spans spread over.
    #[arg(long, default_value_t = 50)]
    pub series: usize,
    /// File holding the ingest bearer token, when the receiver requires one.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PID of the recmeter under load: report its CPU time per span (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// recmeter's /metrics, read with --server-pid to know when every span is counted.
    #[arg(long, default_value = "http://127.0.0.1:9464/metrics")]
    pub metrics_url: String,
    /// File holding the API bearer token for --metrics-url.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
}

/// Entry point of `recmeter loadgen`.
pub fn main(args: LoadgenArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Encoded requests, rebuilt every second.
struct Pool {
    bodies: Vec<Bytes>,
    spans_per_body: u64,
    encoded_bytes_per_span: f64,
}

const POOL_SIZE: usize = 32;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    spans_accepted: AtomicU64,
    /// Spans the receiver reported in `partial_success.rejected_spans`.
    spans_rejected: AtomicU64,
    statuses: Mutex<BTreeMap<String, u64>>,
}

async fn run(args: LoadgenArgs) -> Result<(), String> {
    if args.spans_per_request == 0 || args.concurrency == 0 || args.series == 0 {
        return Err("--spans-per-request, --concurrency and --series must be at least 1".into());
    }
    let token = read_token(args.token_file.as_ref())?;
    let api_token = read_token(args.api_token_file.as_ref())?;
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| match args.protocol {
            LoadProtocol::Grpc => "http://127.0.0.1:4317".into(),
            _ => "http://127.0.0.1:4318/v1/traces".into(),
        });
    let shape = Shape {
        spans_per_request: args.spans_per_request,
        series: args.series,
        json: args.protocol == LoadProtocol::HttpJson,
        // gRPC compresses through tonic, per request.
        gzip: args.gzip && args.protocol != LoadProtocol::Grpc,
    };
    let pool = Arc::new(RwLock::new(Arc::new(
        shape.build(&mut StdRng::from_os_rng()),
    )));
    let first = pool.read().map_err(|_| "pool lock poisoned")?.clone();
    eprintln!(
        "loadgen: {:?} to {endpoint}, {} spans/request, {} in flight, rate {}, for {}; {:.0} encoded bytes per span",
        args.protocol,
        args.spans_per_request,
        args.concurrency,
        if args.rate == 0 {
            "max".to_owned()
        } else {
            format!("{} spans/s", args.rate)
        },
        humantime::format_duration(args.duration),
        first.encoded_bytes_per_span,
    );
    let sender = Sender::connect(args.protocol, &endpoint, args.gzip, token).await?;
    let baseline = match args.server_pid {
        Some(_) => Some(counted_requests(&args.metrics_url, api_token.as_deref()).await?),
        None => None,
    };
    let cpu_start = args.server_pid.map(server_cpu_seconds).transpose()?;

    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let deadline = start + args.duration;
    let refresher = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut rng = StdRng::from_os_rng();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let fresh = Arc::new(shape.build(&mut rng));
                if let Ok(mut p) = pool.write() {
                    *p = fresh;
                }
            }
        }
    });
    let per_task_interval = (args.rate > 0).then(|| {
        let requests_per_second = args.rate as f64 / args.spans_per_request as f64;
        Duration::from_secs_f64(args.concurrency as f64 / requests_per_second)
    });
    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let (pool, counters, sender) = (pool.clone(), counters.clone(), sender.clone());
        tasks.push(tokio::spawn(async move {
            let mut pacing = per_task_interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut i = task;
            while Instant::now() < deadline {
                if let Some(t) = &mut pacing {
                    t.tick().await;
                }
                let Ok(current) = pool.read().map(|p| p.clone()) else {
                    break;
                };
                let body = current.bodies[i % current.bodies.len()].clone();
                i += args.concurrency;
                let (outcome, rejected) = sender.send(body).await;
                counters.requests.fetch_add(1, Ordering::Relaxed);
                if outcome == "ok" {
                    counters.spans_accepted.fetch_add(
                        current.spans_per_body.saturating_sub(rejected),
                        Ordering::Relaxed,
                    );
                    counters
                        .spans_rejected
                        .fetch_add(rejected, Ordering::Relaxed);
                }
                *counters.statuses.lock().await.entry(outcome).or_default() += 1;
            }
        }));
    }
    let mut last_report = Instant::now();
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let accepted = counters.spans_accepted.load(Ordering::Relaxed);
            eprintln!(
                "loadgen: {:>5.0}s  {accepted} spans accepted ({:.0}/s)",
                start.elapsed().as_secs_f64(),
                accepted as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    let elapsed = start.elapsed();
    refresher.abort();
    let accepted = counters.spans_accepted.load(Ordering::Relaxed);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "protocol                 {:?}{}",
        args.protocol,
        if args.gzip { " (gzip)" } else { "" }
    );
    let _ = writeln!(
        out,
        "encoded bytes per span   {:.0}",
        first.encoded_bytes_per_span
    );
    let _ = writeln!(
        out,
        "requests                 {}",
        counters.requests.load(Ordering::Relaxed)
    );
    for (status, n) in counters.statuses.lock().await.iter() {
        let _ = writeln!(out, "  {status:<22} {n}");
    }
    let _ = writeln!(out, "spans accepted           {accepted}");
    let _ = writeln!(
        out,
        "spans rejected           {} (partial_success)",
        counters.spans_rejected.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "elapsed                  {:.2} s",
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "achieved                 {:.0} spans/s",
        accepted as f64 / elapsed.as_secs_f64()
    );
    drop(out);

    if let (Some(pid), Some(cpu_start), Some(baseline)) = (args.server_pid, cpu_start, baseline) {
        // Wait until the server has counted every accepted span, then read its CPU time.
        let wait_until = Instant::now() + Duration::from_secs(60);
        loop {
            let counted =
                counted_requests(&args.metrics_url, api_token.as_deref()).await? - baseline;
            if counted >= accepted as f64 {
                break;
            }
            if Instant::now() > wait_until {
                return Err(format!(
                    "the server counted {counted} of {accepted} accepted spans in 60 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let cpu = server_cpu_seconds(pid)? - cpu_start;
        println!("server cpu (user+sys)    {cpu:.2} s");
        println!("spans per server cpu-s   {:.0}", accepted as f64 / cpu);
    }
    Ok(())
}

fn read_token(path: Option<&PathBuf>) -> Result<Option<String>, String> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    })
    .transpose()
}

/// User+system CPU seconds of a process, from /proc/PID/stat (all threads, exited ones too).
fn server_cpu_seconds(pid: u32) -> Result<f64, String> {
    // USER_HZ: the unit of /proc times, 100 on every mainstream Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| format!("unexpected /proc/{pid}/stat format"))
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// `sum(recs_requests_total)` from a scrape.
async fn counted_requests(url: &str, token: Option<&str>) -> Result<f64, String> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let text = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot scrape {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("recs_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// What the generated requests look like.
#[derive(Debug, Clone, Copy)]
struct Shape {
    spans_per_request: usize,
    series: usize,
    json: bool,
    gzip: bool,
}

impl Shape {
    fn build(&self, rng: &mut StdRng) -> Pool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut raw_bytes = 0usize;
        let bodies = (0..POOL_SIZE)
            .map(|_| {
                let request = synthetic::request(rng, now, self.spans_per_request, self.series);
                let encoded = if self.json {
                    serde_json::to_vec(&request).unwrap_or_default()
                } else {
                    request.encode_to_vec()
                };
                raw_bytes += encoded.len();
                if self.gzip {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    let _ = gz.write_all(&encoded);
                    Bytes::from(gz.finish().unwrap_or_default())
                } else {
                    Bytes::from(encoded)
                }
            })
            .collect();
        Pool {
            bodies,
            spans_per_body: self.spans_per_request as u64,
            encoded_bytes_per_span: raw_bytes as f64 / (POOL_SIZE * self.spans_per_request) as f64,
        }
    }
}

/// Sends pre-encoded bodies over the chosen protocol; answers a short outcome label.
#[derive(Clone)]
enum Sender {
    Grpc(
        tonic::client::Grpc<tonic::transport::Channel>,
        Option<String>,
    ),
    Http {
        client: reqwest::Client,
        url: String,
        json: bool,
        gzip: bool,
        token: Option<String>,
    },
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Sender {
    async fn connect(
        protocol: LoadProtocol,
        endpoint: &str,
        gzip: bool,
        token: Option<String>,
    ) -> Result<Self, String> {
        match protocol {
            LoadProtocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
                    .map_err(|e| format!("invalid endpoint {endpoint}: {e}"))?
                    .connect()
                    .await
                    .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
                let mut grpc = tonic::client::Grpc::new(channel);
                if gzip {
                    grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Ok(Sender::Grpc(grpc, token.map(|t| format!("Bearer {t}"))))
            }
            LoadProtocol::HttpProto | LoadProtocol::HttpJson => Ok(Sender::Http {
                client: reqwest::Client::new(),
                url: endpoint.to_owned(),
                json: protocol == LoadProtocol::HttpJson,
                gzip,
                token,
            }),
        }
    }

    /// Sends one body; answers an outcome label and the spans the receiver rejected inside an
    /// accepted request (`partial_success.rejected_spans`).
    async fn send(&self, body: Bytes) -> (String, u64) {
        match self {
            Sender::Grpc(grpc, authorization) => {
                let mut grpc = grpc.clone();
                if let Err(e) = grpc.ready().await {
                    return (format!("grpc:{e}"), 0);
                }
                let mut request = tonic::Request::new(body);
                if let Some(a) = authorization
                    && let Ok(value) = a.parse()
                {
                    request.metadata_mut().insert("authorization", value);
                }
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                match grpc.unary(request, path, RawCodec).await {
                    Ok(response) => ("ok".to_owned(), rejected_in(response.get_ref(), false)),
                    Err(status) => (format!("grpc:{:?}", status.code()), 0),
                }
            }
            Sender::Http {
                client,
                url,
                json,
                gzip,
                token,
            } => {
                let mut request = client.post(url).header(
                    "Content-Type",
                    if *json {
                        "application/json"
                    } else {
                        "application/x-protobuf"
                    },
                );
                if *gzip {
                    request = request.header("Content-Encoding", "gzip");
                }
                if let Some(t) = token {
                    request = request.bearer_auth(t);
                }
                match request.body(body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let rejected = r.bytes().await.map_or(0, |b| rejected_in(&b, *json));
                        ("ok".to_owned(), rejected)
                    }
                    Ok(r) => (format!("http:{}", r.status().as_u16()), 0),
                    Err(e) if e.is_connect() => ("error:connect".to_owned(), 0),
                    Err(e) if e.is_timeout() => ("error:timeout".to_owned(), 0),
                    Err(_) => ("error:other".to_owned(), 0),
                }
            }
        }
    }
}

/// `partial_success.rejected_spans` of an `ExportTraceServiceResponse` (0 when absent).
fn rejected_in(body: &[u8], json: bool) -> u64 {
    let response = if json {
        serde_json::from_slice::<ExportTraceServiceResponse>(body).ok()
    } else {
        ExportTraceServiceResponse::decode(body).ok()
    };
    response
        .and_then(|r| r.partial_success)
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

/// A gRPC codec that sends pre-encoded message bytes as they are.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
