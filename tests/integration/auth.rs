//! Bearer tokens on the ingest and API ports: refused without or with a wrong token, counted,
//! health always open, and no token in the log.

use crate::harness::{Recmeter, Start};
use crate::limits::{grpc_call_with, one_span_request};

const INGEST_TOKEN: &str = "ingest-Zq81xLw0pV";
const API_TOKEN: &str = "api-Mm72Hk3aT9";

#[test]
fn tokens_guard_ingest_and_api_and_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("ingest.token");
    std::fs::write(&token_file, format!("{INGEST_TOKEN}\n")).unwrap();
    let config = format!(
        "[auth]\ningest_token_file = \"{}\"\n[log]\nlevel = \"debug\"\n",
        token_file.display()
    );
    let recmeter = Recmeter::start_with(Start {
        config: &config,
        env: vec![("RECMETER_AUTH__API_TOKEN", API_TOKEN)],
        ..Start::default()
    });
    let http = reqwest::blocking::Client::new();
    let traces = format!("http://{}/v1/traces", recmeter.addrs.otlp_http);
    let post = |auth: Option<&str>| {
        let mut r = http
            .post(&traces)
            .header("Content-Type", "application/x-protobuf")
            .body(one_span_request(1));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let response = r.send().unwrap();
        let challenge = response.headers().contains_key("www-authenticate");
        (response.status().as_u16(), challenge)
    };
    assert_eq!(post(None), (401, true));
    assert_eq!(post(Some("Bearer wrong")), (401, true));
    assert_eq!(post(Some(&format!("Bearer {INGEST_TOKEN}"))).0, 200);
    // Metrics take the same token.
    let metrics = format!("http://{}/v1/metrics", recmeter.addrs.otlp_http);
    let post_metrics = |auth: Option<String>| {
        let mut r = http
            .post(&metrics)
            .header("Content-Type", "application/json")
            .body("{}");
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(post_metrics(None), 401);
    assert_eq!(post_metrics(Some(format!("Bearer {INGEST_TOKEN}"))), 200);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = recmeter.addrs.otlp_grpc;
    for auth in [None, Some("Bearer wrong".to_owned())] {
        let status = rt
            .block_on(grpc_call_with(addr, one_span_request(2), false, auth))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    rt.block_on(grpc_call_with(
        addr,
        one_span_request(3),
        false,
        Some(format!("Bearer {INGEST_TOKEN}")),
    ))
    .unwrap();
    let status = rt
        .block_on(async {
            use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
            let mut client = MetricsServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            client
                .export(opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest::default())
                .await
        })
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let get = |path: &str, auth: Option<&str>| {
        let mut r = http.get(recmeter.api_url(path));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send().unwrap()
    };
    assert_eq!(get("/metrics", None).status().as_u16(), 401);
    assert_eq!(
        get("/metrics", Some(&format!("Bearer {INGEST_TOKEN}")))
            .status()
            .as_u16(),
        401
    );
    assert_eq!(get("/healthz", None).status().as_u16(), 200);
    assert_eq!(get("/readyz", None).status().as_u16(), 200);
    let body = get("/metrics", Some(&format!("Bearer {API_TOKEN}")))
        .text()
        .unwrap();
    let m = crate::harness::Exposition::parse(&body);
    let rejected = |transport| {
        m.value(
            "recmeter_requests_rejected_total",
            &[("transport", transport), ("reason", "auth")],
        )
    };
    assert_eq!(rejected("http"), 3.0);
    assert_eq!(rejected("grpc"), 3.0);
    assert_eq!(
        m.value(
            "recmeter_api_requests_rejected_total",
            &[("reason", "auth")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "recs_requests_total",
            &[("endpoint", "GET /limits"), ("status", "ok")]
        ),
        2.0
    );

    let log = recmeter.log();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "debug logging was on:\n{log}"
    );
    for token in [INGEST_TOKEN, API_TOKEN] {
        assert!(!log.contains(token), "a token reached the log");
    }
}

#[test]
fn conflicting_or_empty_token_settings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "[auth]\ningest_token = \"x\"\ningest_token_file = \"{0}\"\napi_token_file = \"{0}\"\n",
            empty.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::harness::binary())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("auth.ingest_token_file"), "{stderr}");
    assert!(
        stderr.contains("auth.api_token_file") && stderr.contains("is empty"),
        "{stderr}"
    );
}
