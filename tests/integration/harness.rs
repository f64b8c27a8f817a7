//! Starts `recmeter` as a child process on port 0 and talks to it.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Where the fake clock starts in tests: a minute boundary plus 30 s.
pub const FAKE_START: &str = "2026-03-02T10:00:30Z";

pub fn fake_start() -> SystemTime {
    humantime::parse_rfc3339(FAKE_START).unwrap()
}

pub fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Addresses {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub api: SocketAddr,
}

/// A running recmeter.
pub struct Recmeter {
    child: Option<Child>,
    pub addrs: Addresses,
    /// The working directory (storage and WAL under `data/`): owned, or the caller's.
    _dir: Workdir,
    log: PathBuf,
    http: reqwest::blocking::Client,
}

/// How to start it.
pub struct Start<'a> {
    pub command: &'a str,
    /// Extra `recmeter.toml` text (listener addresses come from the environment).
    pub config: &'a str,
    pub env: Vec<(&'a str, &'a str)>,
    /// `Some` runs with `--test-hooks --fake-clock`.
    pub fake_clock: Option<&'a str>,
    /// Run in this directory (kept after the process ends, for a restart on the same storage)
    /// instead of a fresh temporary one.
    pub dir: Option<&'a Path>,
    /// Run with this open-files limit (`ulimit -n`).
    pub open_files: Option<u64>,
}

enum Workdir {
    Owned(tempfile::TempDir),
    Borrowed(PathBuf),
}

impl Workdir {
    fn path(&self) -> &Path {
        match self {
            Workdir::Owned(d) => d.path(),
            Workdir::Borrowed(p) => p,
        }
    }
}

impl Default for Start<'_> {
    fn default() -> Self {
        Self {
            command: "serve",
            config: "",
            env: Vec::new(),
            fake_clock: Some(FAKE_START),
            dir: None,
            open_files: None,
        }
    }
}

/// Removes the cloud credential and endpoint variables of the environment the tests run in
/// from `cmd`: no test reaches a real bucket, and the storage tests set their own.
pub fn without_cloud_variables(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("AWS_") || name.starts_with("GOOGLE_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_recmeter")
}

impl Recmeter {
    /// `recmeter serve` with the fake clock and `config`.
    pub fn start(config: &str) -> Self {
        Self::start_with(Start {
            config,
            ..Start::default()
        })
    }

    /// `recmeter serve` with `config`, in `dir`: a later start there restarts on the same
    /// storage.
    pub fn start_in(config: &str, dir: &Path) -> Self {
        Self::start_with(Start {
            config,
            dir: Some(dir),
            ..Start::default()
        })
    }

    pub fn start_with(start: Start<'_>) -> Self {
        let dir = match start.dir {
            Some(p) => Workdir::Borrowed(p.to_owned()),
            None => Workdir::Owned(tempfile::tempdir().unwrap()),
        };
        // A restart must not read the previous run's ready file.
        let _ = std::fs::remove_file(dir.path().join("ready.json"));
        let config_path = dir.path().join("recmeter.toml");
        std::fs::write(&config_path, start.config).unwrap();
        let ready = dir.path().join("ready.json");
        let log = dir.path().join("recmeter.log");
        let mut cmd = match start.open_files {
            None => Command::new(binary()),
            // The shell lowers its limit and becomes recmeter (same process id).
            Some(n) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary());
                cmd
            }
        };
        cmd.arg(start.command)
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("RECMETER_OTLP__GRPC_ADDRESS", "127.0.0.1:0")
            .env("RECMETER_OTLP__HTTP_ADDRESS", "127.0.0.1:0")
            .env("RECMETER_API__ADDRESS", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            );
        without_cloud_variables(&mut cmd);
        for (k, v) in &start.env {
            cmd.env(k, v);
        }
        if let Some(at) = start.fake_clock {
            cmd.arg("--test-hooks").arg("--fake-clock").arg(at);
        }
        let mut child = cmd.spawn().expect("recmeter starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addrs = loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(addrs) = serde_json::from_str::<Addresses>(&text)
            {
                break addrs;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "recmeter exited with {status} before ready:\n{}",
                    read(&log)
                );
            }
            assert!(
                Instant::now() < deadline,
                "recmeter not ready in 30 s:\n{}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child: Some(child),
            addrs,
            _dir: dir,
            log,
            http: reqwest::blocking::Client::new(),
        }
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addrs.api, path)
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }

    /// GET on the API port: status, content type and body.
    pub fn get(&self, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let mut request = self.http.get(self.api_url(path));
        if let Some(a) = accept {
            request = request.header("Accept", a);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().unwrap())
    }

    /// POST spans to the OTLP/HTTP port: status and body bytes.
    pub fn post_otlp(&self, content_type: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        self.post_otlp_to("/v1/traces", content_type, body)
    }

    /// POST to `path` on the OTLP/HTTP port: status and body bytes.
    pub fn post_otlp_to(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let response = self
            .http
            .post(format!("http://{}{path}", self.addrs.otlp_http))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.bytes().unwrap().to_vec(),
        )
    }

    /// The Prometheus text 0.0.4 exposition.
    pub fn metrics(&self) -> Exposition {
        let (status, _, body) = self.get("/metrics", None);
        assert_eq!(status, 200, "{body}");
        Exposition::parse(&body)
    }

    /// POSTs `body` as JSON to the API's `path`.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::blocking::Response {
        self.http
            .post(self.api_url(path))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    }

    /// Moves the fake clock forward (humantime duration such as "60s").
    pub fn advance(&self, by: &str) {
        let response = self.post_json("/-/test/clock", &serde_json::json!({ "advance": by }));
        assert_eq!(
            response.status().as_u16(),
            200,
            "{}",
            response.text().unwrap()
        );
    }

    /// `kill -9`: no shutdown, no final checkpoint.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .arg("-KILL")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        child.wait().unwrap();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit.
    pub fn terminate(self) -> (ExitStatus, String) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        self.wait()
    }

    /// Waits (up to 20 s) for the process to exit.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "no exit 20 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recmeter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// One sample of a text-format exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed Prometheus text exposition (an independent reader: it shares no code with recmeter).
#[derive(Debug, Clone)]
pub struct Exposition {
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(parse_sample)
            .collect();
        Self { samples }
    }

    /// The sample named `name` whose labels include `labels`; panics if more than one matches.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} samples",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// Like [`find`](Self::find), 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }

    /// Sum over every sample named `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (name_end, mut labels) = (line.find(['{', ' ']).unwrap(), BTreeMap::new());
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let mut chars = rest[1..].char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().unwrap();
            match c {
                '}' => {
                    rest = &rest[i + 2..];
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().unwrap().1, '"');
                    let mut value = String::new();
                    loop {
                        match chars.next().unwrap().1 {
                            '\\' => match chars.next().unwrap().1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next().unwrap();
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    Sample {
        name,
        labels,
        value,
    }
}

/// The Python interpreter of the test venv (scripts/test.sh makes it).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TEST_VENV_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python");
    assert!(
        p.exists(),
        "no test venv at {}: run scripts/test.sh",
        p.display()
    );
    p
}

#[test]
fn exposition_parser_reads_escapes() {
    let e = Exposition::parse("# HELP x y\nx{a=\"q\\\"\\\\\\n\",b=\"\"} 2.5\ny 3\n");
    assert_eq!(e.find("x", &[("a", "q\"\\\n")]), Some(2.5));
    assert_eq!(e.find("y", &[]), Some(3.0));
}
