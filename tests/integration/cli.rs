//! The command line: validate, version, hidden flags, health, shutdown.

use std::process::Command;

use crate::harness::{Recmeter, Start, binary};

#[test]
fn validate_lists_every_problem_and_accepts_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[otlp]\ngrpc_address = \"nowhere\"\nmax_body = 5\n[aggregator]\nmax_series = \"lots\"\n[alerts]\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "otlp.grpc_address",
        "otlp.max_body",
        "aggregator.max_series",
        "alerts",
    ] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/recmeter.example.toml");
    let out = Command::new(binary())
        .arg("validate")
        .arg(example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(binary())
        .arg("validate")
        .arg(example)
        .env("RECMETER_AGGREGATOR__SIGNIFICANT_DIGITS", "9")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "environment overrides are validated too"
    );
}

#[test]
fn version_help_and_hidden_flags() {
    let out = Command::new(binary()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("recmeter "));
    for sub in ["serve", "demo", "validate"] {
        let out = Command::new(binary())
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            !help.contains("test-hooks"),
            "hidden flag shown in {sub} --help"
        );
    }
    let out = Command::new(binary())
        .args(["serve", "--fake-clock", "2026-01-01T00:00:00Z"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "--fake-clock needs --test-hooks"
    );
}

#[test]
fn test_routes_exist_only_with_test_hooks_and_health_is_open() {
    let plain = Recmeter::start_with(Start {
        fake_clock: None,
        ..Start::default()
    });
    assert_eq!(plain.get("/healthz", None).0, 200);
    assert_eq!(plain.get("/readyz", None).0, 200);
    let client = reqwest::blocking::Client::new();
    let status = client
        .post(plain.api_url("/-/test/clock"))
        .header("Content-Type", "application/json")
        .body(serde_json::json!({"advance": "60s"}).to_string())
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404);

    let hooked = Recmeter::start("");
    let status = client
        .post(hooked.api_url("/-/test/hook"))
        .header("Content-Type", "application/json")
        .body(serde_json::json!({"name": "no_such_fault", "on": true}).to_string())
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 400);
    hooked.advance("90s");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_cleanly() {
    use std::io::{Read, Write};
    let recmeter = Recmeter::start("");
    // Half a request on the wire when SIGTERM arrives; the rest follows after it.
    let body = br#"{"resourceSpans": []}"#;
    let mut stream = std::net::TcpStream::connect(recmeter.addrs.otlp_http).unwrap();
    write!(
        stream,
        "POST /v1/traces HTTP/1.1\r\nHost: recmeter\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..5]).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = recmeter.pid();
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    stream.write_all(&body[5..]).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (status, log) = recmeter.wait();
    assert!(status.success(), "{log}");
    assert!(log.contains("Shutting down"), "{log}");
    assert!(log.contains("recmeter stopped"), "{log}");
}
