//! Checkpoint participants and tasks on recmeter's clock, through the test hooks: the test
//! ledger (a participant with its own log entry kind) holds exactly what its applied events
//! give across `kill -9` and restarts from a checkpoint, in both durability modes; the
//! checkpoint task fires on the fake clock before `/-/test/clock` answers.

use std::path::Path;

use crate::harness::{Recmeter, Start};

/// Logs an event adding `n` to the test ledger; answered once durable and applied.
fn add(recmeter: &Recmeter, n: u64) {
    let response = recmeter.post_json("/-/test/ledger", &serde_json::json!({ "add": n }));
    assert_eq!(
        response.status().as_u16(),
        204,
        "{}",
        response.text().unwrap()
    );
}

/// The numbers the ledger has applied, in order.
fn ledger(recmeter: &Recmeter) -> Vec<u64> {
    let (status, _, body) = recmeter.get("/-/test/ledger", None);
    assert_eq!(status, 200, "{body}");
    let saved: serde_json::Value = serde_json::from_str(&body).unwrap();
    saved["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// The manifests in `dir`'s store, oldest first, as JSON.
fn manifests(dir: &Path) -> Vec<serde_json::Value> {
    let mut paths: Vec<_> = std::fs::read_dir(dir.join("data/manifests"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect()
}

fn ledger_survives_kill9_and_checkpoints(durability: &str) {
    let config =
        format!("[wal]\ndurability = \"{durability}\"\n[storage]\ncheckpoint_interval = \"10s\"\n");
    let dir = tempfile::tempdir().unwrap();
    let start = || Recmeter::start_in(&config, dir.path());
    let recmeter = start();
    for n in [5, 3, 8] {
        add(&recmeter, n);
    }
    assert_eq!(ledger(&recmeter), [5, 3, 8]);
    recmeter.kill9();

    // From the log alone: no checkpoint was taken.
    let restarted = start();
    assert!(manifests(dir.path()).is_empty());
    assert_eq!(ledger(&restarted), [5, 3, 8], "after kill -9, from the log");
    // A checkpoint (the clock passes the interval), then more events in the log only.
    restarted.advance("10s");
    let manifest = manifests(dir.path()).pop().expect("a checkpoint");
    let section = &manifest["sections"]["test_ledger"];
    assert_eq!(section["lifetime"], "checkpoint", "{manifest}");
    let file = section["files"][0]["path"].as_str().unwrap();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("data").join(file)).unwrap())
            .unwrap();
    assert_eq!(saved["applied"], serde_json::json!([5, 3, 8]));
    add(&restarted, 1);
    add(&restarted, 9);
    restarted.kill9();

    // From the checkpoint, then the log after it.
    let again = start();
    assert_eq!(ledger(&again), [5, 3, 8, 1, 9], "checkpoint and log");
    // A clean stop checkpoints everything; the next start replays nothing.
    let (status, _) = again.terminate();
    assert!(status.success());
    let last = manifests(dir.path()).pop().unwrap();
    let saved = &last["sections"]["test_ledger"]["files"][0]["path"];
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("data").join(saved.as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["applied"], serde_json::json!([5, 3, 8, 1, 9]));
    let last = start();
    assert_eq!(ledger(&last), [5, 3, 8, 1, 9]);
    let log = last.log();
    let restored = log.lines().rev().find(|l| l.contains("Restored.")).unwrap();
    assert!(restored.contains("wal_entries=0"), "{restored}");
}

#[test]
fn a_participant_holds_exactly_its_applied_events_across_kill9_with_the_wal() {
    ledger_survives_kill9_and_checkpoints("wal");
}

/// Component events are logged and fsynced even when request records are not.
#[test]
fn a_participant_holds_exactly_its_applied_events_across_kill9_with_checkpoint_durability() {
    ledger_survives_kill9_and_checkpoints("checkpoint");
}

#[test]
fn bad_ledger_events_are_refused_and_log_nothing() {
    let recmeter = Recmeter::start("");
    let huge = format!(r#"{{"add": [{}1]}}"#, "1,".repeat(500_000));
    for body in [
        r#"{"add": "x"}"#,
        r#"{"add": 1, "more": 2}"#,
        "not json",
        r#"{"add": 18446744073709551616}"#,
        r#"{"add": -1}"#,
        r#"{"add": 1.5}"#,
        "{}",
        "",
        &huge,
    ] {
        let response = reqwest::blocking::Client::new()
            .post(recmeter.api_url("/-/test/ledger"))
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .unwrap();
        assert!(
            response.status().is_client_error(),
            "{body}: {}",
            response.status()
        );
    }
    assert!(ledger(&recmeter).is_empty());
    // The largest number is an event like any other.
    add(&recmeter, u64::MAX);
    assert_eq!(ledger(&recmeter), [u64::MAX]);
}

/// A 30 s task on recmeter's clock (the checkpoint loop at `checkpoint_interval = "30s"`)
/// fires once when the clock jumps 2 minutes, and once per 30 s step; each time the
/// checkpoint is in the store when `/-/test/clock` answers.
#[test]
fn a_30s_task_fires_once_per_jump_and_per_step_before_the_clock_answers() {
    let dir = tempfile::tempdir().unwrap();
    let recmeter = Recmeter::start_with(Start {
        config: "[storage]\ncheckpoint_interval = \"30s\"\n",
        dir: Some(dir.path()),
        ..Start::default()
    });
    let ids = || -> Vec<u64> {
        manifests(dir.path())
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };
    add(&recmeter, 1);
    recmeter.advance("29s");
    assert!(ids().is_empty(), "not due yet");
    // 2 min in one jump: the ticks it passes coalesce into one firing.
    recmeter.advance("2m");
    assert_eq!(ids(), [1]);
    let mut expected_seq = manifests(dir.path())[0]["wal_seq"].as_u64().unwrap();
    for step in 2..=4u64 {
        add(&recmeter, step);
        expected_seq += 1;
        recmeter.advance("30s");
        let all = manifests(dir.path());
        let newest = all.last().unwrap();
        // One more checkpoint per step (the one before it deleted once superseded), holding
        // the event logged just before the step.
        assert_eq!(newest["id"].as_u64(), Some(step), "{all:?}");
        assert_eq!(newest["wal_seq"].as_u64(), Some(expected_seq));
    }
}
