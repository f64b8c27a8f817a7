//! `recmeter kafka bench`: how fast recmeter drains a pre-filled topic, side by side with a
//! bare librdkafka consumer that only decodes the same messages (issue 29's benchmark). Each
//! run fills a fresh topic, drains it with the bare consumer, then starts `recmeter serve` on
//! it (a child process with its own store) and times it until every span is counted.

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use recmeter_collector::sources::otlp::synthetic;

/// `recmeter kafka …`.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    #[command(subcommand)]
    pub command: KafkaCommand,
}

#[derive(Debug, Subcommand)]
pub enum KafkaCommand {
    /// Fill a fresh topic, drain it with a bare consumer that only decodes, then with
    /// `recmeter serve`, and print both rates in spans per second and their ratio.
    Bench(BenchArgs),
}

/// `recmeter kafka bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Bootstrap brokers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Spans in the topic.
    #[arg(long, default_value_t = 1_000_000)]
    pub spans: usize,
    /// Spans in each message.
    #[arg(long, default_value_t = 1_000)]
    pub spans_per_message: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Runs, each on a fresh topic; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// Entry point of `recmeter kafka`.
pub fn main(args: KafkaArgs) -> ExitCode {
    let KafkaCommand::Bench(args) = args.command;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: &BenchArgs) -> Result<(), String> {
    if args.spans_per_message == 0 || args.spans < args.spans_per_message {
        return Err("--spans must be at least --spans-per-message, which must be above 0".into());
    }
    let messages = args.spans / args.spans_per_message;
    let spans = (messages * args.spans_per_message) as u64;
    let mut ratios = Vec::new();
    let (mut bare_rates, mut recmeter_rates) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let topic = fresh("recmeter-bench");
        fill(args, &topic, messages).await?;
        let bare = tokio::task::spawn_blocking({
            let (brokers, topic) = (args.brokers.clone(), topic.clone());
            move || drain_bare(&brokers, &topic, spans)
        })
        .await
        .map_err(|e| e.to_string())??;
        let served = drain_recmeter(args, &topic, spans).await?;
        let ratio = served / bare;
        println!(
            "run {run}: {spans} spans in {messages} messages; bare consumer (decode only) {bare:.0} spans/s, recmeter {served:.0} spans/s, ratio {ratio:.3}"
        );
        bare_rates.push(bare);
        recmeter_rates.push(served);
        ratios.push(ratio);
    }
    println!(
        "median of {} runs: bare {:.0} spans/s, recmeter {:.0} spans/s, ratio {:.3}",
        args.runs,
        median(&mut bare_rates),
        median(&mut recmeter_rates),
        median(&mut ratios)
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A name no earlier run used.
fn fresh(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{what}-{nanos}")
}

/// Creates `topic` and fills it with `messages` synthetic requests.
async fn fill(args: &BenchArgs, topic: &str, messages: usize) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let created = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                args.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| format!("cannot create {topic}: {e}"))?;
    for result in created {
        result.map_err(|(t, e)| format!("cannot create {t}: {e}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("message.timeout.ms", "60000")
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(29);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let started = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(64) {
        let bodies: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|i| {
                let request = synthetic::request(&mut rng, now, args.spans_per_message, 50);
                (format!("recs-api-{}", i % 16), request.encode_to_vec())
            })
            .collect();
        let sends = bodies.iter().map(|(key, body)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(body),
                Duration::from_secs(60),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(e, _)| format!("cannot fill {topic}: {e}"))?;
        }
    }
    eprintln!(
        "filled {topic}: {messages} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Drains `topic` with a bare consumer that decodes each message and counts its spans; spans
/// per second from the first message to the last.
fn drain_bare(brokers: &str, topic: &str, spans: u64) -> Result<f64, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", fresh("recmeter-bench-bare"))
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let mut seen = 0u64;
    while seen < spans {
        if Instant::now() > deadline {
            return Err(format!(
                "the bare consumer read {seen} of {spans} spans in 600 s"
            ));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|e| e.to_string())?;
        let request = ExportTraceServiceRequest::decode(message.payload().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let n: u64 = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum();
        if first.is_none() {
            first = Some((Instant::now(), n));
        }
        seen += n;
    }
    let (at, n0) = first.unwrap_or((Instant::now(), 0));
    Ok((seen - n0) as f64 / at.elapsed().as_secs_f64())
}

/// Starts `recmeter serve` on `topic` with a fresh store and group, and times it from the
/// first span counted to the last.
async fn drain_recmeter(args: &BenchArgs, topic: &str, spans: u64) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\ntraces_topic = \"{topic}\"\n\
         metrics_topic = \"{topic}-metrics\"\n[kafka.options]\n\"session.timeout.ms\" = \"6000\"\n",
        args.brokers,
        fresh("recmeter-bench")
    );
    std::fs::write(dir.path().join("recmeter.toml"), config).map_err(|e| e.to_string())?;
    let mut server = Server::start(dir.path())?;
    let url = format!("http://{}/metrics", server.api);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, f64)> = None;
    loop {
        if Instant::now() > deadline {
            return Err(format!("recmeter did not count {spans} spans in 600 s"));
        }
        let n = received(&url).await?;
        if n > 0.0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= spans as f64 {
            let (at, n0) = first.unwrap_or((Instant::now(), 0.0));
            let elapsed = at.elapsed().as_secs_f64();
            server.stop();
            return Ok((n - n0) / elapsed.max(1e-3));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `recmeter_spans_received_total{transport="kafka"}` from a scrape.
async fn received(url: &str) -> Result<f64, String> {
    let text = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot scrape {url}: {e}"))?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("recmeter_spans_received_total{transport=\"kafka\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0))
}

/// A `recmeter serve` child process in `dir`.
struct Server {
    child: Child,
    api: String,
}

impl Server {
    fn start(dir: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let ready = dir.join("ready.json");
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(dir.join("recmeter.toml"))
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(dir)
            .env("RECMETER_OTLP__GRPC_ADDRESS", "127.0.0.1:0")
            .env("RECMETER_OTLP__HTTP_ADDRESS", "127.0.0.1:0")
            .env("RECMETER_API__ADDRESS", "127.0.0.1:0")
            .env("RECMETER_LOG__LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start recmeter serve: {e}"))?;
        let mut server = Self {
            child,
            api: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(api) = json["api"].as_str()
            {
                server.api = api.to_owned();
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err("recmeter serve was not ready in 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
