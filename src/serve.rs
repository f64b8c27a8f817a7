//! `recmeter serve` and `recmeter demo`: wires collector, aggregator and exporter together,
//! reports readiness, and shuts down in order on SIGTERM or Ctrl-C: listeners stop taking new
//! requests, in-flight ones finish, the aggregator drains its queue, all within
//! `service.shutdown_timeout`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use recmeter_aggregator::billing::{BillingLedger, CostTable, StoreLanding};
use recmeter_aggregator::clock::Ticks;
use recmeter_aggregator::cost::ScanStatus;
use recmeter_aggregator::durability::{self, Checkpointer, Durability, Layout};
use recmeter_aggregator::kafka::KafkaStatus;
use recmeter_aggregator::participant::{Participants, TestLedger};
use recmeter_aggregator::slo::{
    Severity, SloAlerts, SloAlertsTable, SloEvaluator, SloStatus, SloStatusTable,
};
use recmeter_aggregator::store::history::History;
use recmeter_aggregator::store::object as store;
use recmeter_aggregator::telemetry::Listener;
use recmeter_aggregator::unit_cost::{CostEvaluator, CostStatus, CostTables};
use recmeter_aggregator::{
    Aggregator, AggregatorHandle, Clock, Hooks, InvalidField, QueryEngine, Telemetry,
};
use recmeter_collector::sources::billing::BillingSource;
use recmeter_collector::sources::otlp::{Ingest, ServeOptions, http_router, serve_grpc};
use recmeter_exporter::api::METRICS_WINDOWS;
use recmeter_exporter::api::default_providers;
use recmeter_exporter::pagerduty::deliver::{POLL_PERIOD, events_counter, reconcile};
use recmeter_exporter::pagerduty::{Client, Deliverer, EventContext, Outbox};
use recmeter_exporter::prometheus::{
    BillingProvider, CostProvider, KafkaProvider, PagerDutyProvider, Provider, SloProvider,
};
use recmeter_exporter::promql::ring::keep_sampling;
use recmeter_exporter::promql::{QueryApi, Ring, Rollups};
use recmeter_exporter::{ApiState, api_router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

use crate::allocator::ReturnFreedPages;
use crate::cli::RunArgs;
use crate::config::{Config, LogConfig, LogFormat};
use crate::demo::Workload;
use crate::error::{Error, Result};
use crate::listen::{self, Limits};

/// Bound addresses, as written to `--ready-file`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Addresses {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub api: SocketAddr,
}

/// Entry point of `serve` and `demo`.
pub fn main(args: RunArgs, workload: Option<Workload>) -> ExitCode {
    let config = match Config::load(args.config.as_deref(), crate::config::environment()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}", Error::Config(errors));
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config.log);
    let mut config = config;
    if workload.is_some() {
        // The demo bills itself and splits its cost by component unless told otherwise.
        if !config.billing.is_on() {
            config.billing.url = crate::demo_history::BILLING_DIR.to_owned();
        }
        if config.cost.components.is_empty() && config.cost.allocation.is_empty() {
            let demo = crate::demo_history::cost_config();
            config.cost.components = demo.components;
            config.cost.allocation = demo.allocation;
        }
    }
    if let Err(e) = crate::allocator::disable_transparent_huge_pages() {
        tracing::warn!(error = %e, "Cannot turn off transparent huge pages for recmeter; its RSS may grow with them.");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}", Error::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, args, workload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "recmeter stopped.");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|source| Error::Bind { address, source })
}

async fn run(config: Config, args: RunArgs, workload: Option<Workload>) -> Result<()> {
    let clock = Arc::new(if args.test_hooks {
        let start = args.fake_clock.unwrap_or_else(SystemTime::now);
        tracing::warn!(
            start = %humantime::format_rfc3339_nanos(start),
            "Test hooks enabled: the clock moves only through POST /-/test/clock."
        );
        Clock::fake(start)
    } else {
        Clock::System
    });
    let telemetry = Arc::new(Telemetry::default());
    let hooks = Arc::new(Hooks::default());
    // Components whose state the log and checkpoints keep with the counts. Under the test
    // hooks, a test ledger driven by `/-/test/ledger`.
    let mut participants = Participants::default();
    // The PagerDuty outbox, registered even while PagerDuty is off so that a log an earlier
    // run wrote replays; it queues the SLO alerts' transitions of the severities routed.
    let routing = config.pagerduty.routing().map_err(Error::Config)?;
    let outbox = Arc::new(Outbox::new(routing.routed(), &config.service.instance()));
    participants.register(outbox.clone())?;
    // The SLO alerts: which fire, and every transition.
    let slo_alerts = Arc::new(SloAlerts::default().with_subscriber(outbox.subscriber()));
    let pagerduty_alerts = slo_alerts.clone();
    participants.register(slo_alerts.clone())?;
    // The billing ledger, registered even while the billing source is off, like the outbox.
    let ledger = Arc::new(BillingLedger::default());
    participants.register(ledger.clone())?;
    if args.test_hooks {
        participants.register(Arc::new(TestLedger::default()))?;
    }
    let (aggregator, worker, checkpoints, history) = restore(
        &config,
        clock,
        participants,
        hooks.clone(),
        telemetry.clone(),
        args.wal_truncate_at_corruption,
    )
    .await?;
    // A fresh demo gets its history and bill before anything reads them.
    if workload.is_some() && history.first_minute().is_none() {
        seed_demo(&config, &aggregator, &checkpoints).await;
    }
    let engine =
        Arc::new(QueryEngine::new(aggregator.state().clone(), &config.sql)?.with_history(history));
    let slo_status = Arc::new(SloStatus::default());
    engine.register_table(Arc::new(SloStatusTable(slo_status.clone())))?;
    engine.register_table(Arc::new(SloAlertsTable(slo_alerts.clone())))?;
    for table in CostTable::both(&ledger) {
        engine.register_table(table)?;
    }
    let cost_status = Arc::new(CostStatus::default());
    for table in CostTables::all(&cost_status) {
        engine.register_table(table)?;
    }
    let rates = config.billing.rates().map_err(Error::Config)?;
    let cost = Arc::new(CostEvaluator::new(
        &config.cost,
        rates,
        engine.clone(),
        aggregator.clone(),
        ledger.clone(),
        cost_status.clone(),
        config.ingest.max_span_age,
    )?);
    let slo = Arc::new(
        SloEvaluator::new(
            &config.slo,
            &config.aggregator.threshold_columns(),
            engine.clone(),
            aggregator.clone(),
            slo_alerts.clone(),
            slo_status.clone(),
            config.ingest.max_span_age,
        )?
        .with_cost(cost_status.clone()),
    );
    let mut providers: Vec<Arc<dyn Provider>> = default_providers(&aggregator, &engine).to_vec();
    providers.push(Arc::new(SloProvider {
        config: config.slo.clone(),
        status: slo_status,
        alerts: slo_alerts,
    }));
    providers.push(Arc::new(CostProvider {
        status: cost_status.clone(),
    }));
    providers.push(Arc::new(PagerDutyProvider {
        outbox: outbox.clone(),
    }));
    let scan_status = Arc::new(ScanStatus::default());
    providers.push(Arc::new(BillingProvider {
        status: scan_status.clone(),
        ledger: ledger.clone(),
    }));
    let kafka_status = Arc::new(KafkaStatus::default());
    if config.kafka.is_on() {
        providers.push(Arc::new(KafkaProvider {
            status: kafka_status.clone(),
            topics: config
                .kafka
                .topics()
                .into_iter()
                .map(|(_, topic)| topic.to_owned())
                .collect(),
        }));
    }

    let grpc = bind(config.otlp.grpc_address).await?;
    let http = bind(config.otlp.http_address).await?;
    let api = bind(config.api.address).await?;
    let local = |l: &TcpListener, configured: SocketAddr| l.local_addr().unwrap_or(configured);
    let addresses = Addresses {
        otlp_grpc: local(&grpc, config.otlp.grpc_address),
        otlp_http: local(&http, config.otlp.http_address),
        api: local(&api, config.api.address),
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopping = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let ingest = Ingest::new(
        Arc::new(aggregator.clone()),
        &config.ingest,
        &config.metrics,
    );
    let kafka_ingest = ingest.clone();
    let ready = Arc::new(AtomicBool::new(false));
    let tokens = config.auth.tokens().map_err(Error::Config)?;
    let options = ServeOptions {
        max_body_bytes: config.otlp.max_body_bytes,
        token: tokens.ingest.clone(),
        max_spans_per_request: config.otlp.max_spans_per_request,
        max_points_per_request: config.otlp.max_points_per_request,
        body_timeout: config.otlp.idle_timeout,
    };
    let otlp_limits = |share| Limits {
        header_read_timeout: config.otlp.header_read_timeout,
        idle_timeout: config.otlp.idle_timeout,
        max_connections: match config.otlp.max_connections {
            0 => listen::default_max_connections(share),
            n => n,
        },
    };
    let api_limits = Limits {
        header_read_timeout: config.api.header_read_timeout,
        idle_timeout: config.api.idle_timeout,
        max_connections: match config.api.max_connections {
            0 => listen::default_max_connections(1.0 / 8.0),
            n => n,
        },
    };
    let mut servers = JoinSet::new();
    servers.spawn({
        let done = stopping(shutdown_rx.clone());
        let (ingest, options) = (ingest.clone(), options.clone());
        let incoming = listen::incoming(
            grpc,
            Listener::OtlpGrpc,
            otlp_limits(3.0 / 8.0),
            telemetry.clone(),
        );
        async move {
            serve_grpc(incoming, ingest, options, done)
                .await
                .map_err(Error::from)
        }
    });
    servers.spawn(listen::serve_http1(
        http,
        Listener::OtlpHttp,
        otlp_limits(3.0 / 8.0),
        telemetry.clone(),
        http_router(ingest, options),
        stopping(shutdown_rx.clone()),
    ));
    let providers: Arc<[Arc<dyn Provider>]> = providers.into();
    let ring = Arc::new(Ring::default());
    let query = Arc::new(QueryApi::new(
        config.query.clone(),
        Rollups {
            engine: engine.clone(),
            aggregator: aggregator.clone(),
        },
        ring.clone(),
    ));
    // recmeter's own families, sampled once a minute for the query API (a day, in memory).
    let sampling = tokio::spawn(keep_sampling(
        ring,
        providers.clone(),
        aggregator.clock().clone(),
        aggregator.clock().ticks(Duration::from_secs(60)),
    ));
    servers.spawn(listen::serve_http1(
        api,
        Listener::Api,
        api_limits,
        telemetry.clone(),
        api_router(ApiState {
            providers,
            query,
            aggregator: aggregator.clone(),
            engine: engine.clone(),
            ready: ready.clone(),
            test_hooks: args.test_hooks,
            token: tokens.api.clone(),
        }),
        stopping(shutdown_rx.clone()),
    ));

    // `/metrics`' long windows' final hours are merged before ready, then kept up to date
    // ahead of scrapes (ADR 008). Only ahead: a scrape merges them itself when they are not.
    let failing = match engine.prepare(&METRICS_WINDOWS).await {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot merge the final hours before ready; scrapes will.");
            true
        }
    };
    let preparing = tokio::spawn(keep_prepared(
        engine.clone(),
        aggregator.clock().ticks(Duration::from_secs(1)),
        failing,
    ));
    // PagerDuty delivery, on recmeter's clock and whenever a transition queues.
    let delivering = if routing.is_on() {
        let counter = events_counter(&aggregator);
        for action in ["trigger", "resolve"] {
            for outcome in ["accepted", "retried", "rejected"] {
                counter.add(&[action, outcome], 0);
            }
        }
        let context = EventContext {
            instance: config.service.instance(),
            source: config
                .pagerduty
                .source
                .clone()
                .unwrap_or_else(crate::config::host_name),
            links: config.pagerduty.links.clone(),
            objectives: config.slo.objectives.clone(),
            no_data_after: config.slo.no_data_after,
        };
        let client = Client::new(&config.pagerduty)?;
        let unrouted: Vec<&str> = [Severity::Page, Severity::Ticket, Severity::NoData]
            .into_iter()
            .filter(|s| routing.key(*s).is_none())
            .map(Severity::label)
            .collect();
        if !unrouted.is_empty() {
            tracing::warn!(
                unrouted = ?unrouted,
                "Some SLO alert severities have no PagerDuty routing key; their alerts are not sent (set pagerduty.routing_key for all)."
            );
        }
        if client.endpoint().starts_with("http://") {
            tracing::warn!(
                endpoint = client.endpoint(),
                "pagerduty.url is plain http: routing keys cross the network unencrypted."
            );
        }
        // Alerts that changed while PagerDuty was off, before the evaluation changes more.
        reconcile(&outbox, &pagerduty_alerts, &aggregator).await;
        tracing::info!(
            endpoint = client.endpoint(),
            instance = %context.instance,
            routed = ?routing.routed().iter().map(|s| s.label()).collect::<Vec<_>>(),
            pending = outbox.pending_len(),
            "Delivering SLO alerts to PagerDuty."
        );
        let deliverer =
            Deliverer::new(outbox.clone(), routing, context, client, aggregator.clone());
        // Half the shutdown deadline at most, so the aggregator's drain and the final
        // checkpoint keep the rest.
        Some(tokio::spawn(deliverer.run(
            aggregator.clock().ticks(POLL_PERIOD),
            stopping(shutdown_rx.clone()),
            config.service.shutdown_timeout / 2,
        )))
    } else {
        if outbox.pending_len() > 0 {
            tracing::warn!(
                pending = outbox.pending_len(),
                "PagerDuty events wait in the outbox but [pagerduty] sets no routing key; they go once one is set."
            );
        } else {
            tracing::info!("PagerDuty delivery is off: [pagerduty] sets no routing key.");
        }
        None
    };
    // Cost per recommendation is worked out once before ready, then every
    // `cost.evaluation_interval` and whenever the bills in force change.
    if let Err(e) = cost.evaluate().await {
        tracing::warn!(error = %e, "Cannot work out cost per recommendation before ready; retrying on schedule.");
    }
    let costing = {
        let ticks = aggregator.clock().ticks(config.cost.evaluation_interval);
        ledger.watch(ticks.nudge());
        tokio::spawn(async move {
            keep_running(
                ticks,
                "Cannot work out cost per recommendation; the gauges keep the last figures.",
                "Working out cost per recommendation again.",
                || {
                    let cost = cost.clone();
                    async move { cost.evaluate().await }
                },
            )
            .await;
        })
    };
    // The objectives are evaluated once before ready (the first reads the store for the final
    // hours of the last 30 days), then every `slo.evaluation_interval` of recmeter's clock.
    if let Err(e) = slo.evaluate().await {
        tracing::warn!(error = %e, "Cannot evaluate the SLOs before ready; retrying on schedule.");
    }
    let evaluating = {
        let ticks = aggregator.clock().ticks(config.slo.evaluation_interval);
        tokio::spawn(async move {
            keep_running(
                ticks,
                "Cannot evaluate the SLOs; alerts stay as they are.",
                "Evaluating the SLOs again.",
                || {
                    let slo = slo.clone();
                    async move { slo.evaluate().await }
                },
            )
            .await;
        })
    };
    // Cost lines land through the ledger, from the billing bucket and the Kafka billing topic.
    let landing = Arc::new(StoreLanding::new(
        checkpoints.store().clone(),
        aggregator.clone(),
        ledger.clone(),
        hooks.clone(),
    ));
    if config.billing.is_on() {
        let bucket = store::open(&config.billing.url, false).map_err(|e| {
            Error::Config(vec![InvalidField::new(
                "billing.url",
                e.to_string().replace("storage.url", "billing.url"),
            )])
        })?;
        let source = BillingSource::new(
            bucket.objects,
            landing.clone(),
            config.billing.source(),
            aggregator.clock().clone(),
            aggregator.telemetry(),
            scan_status,
        );
        let clock = aggregator.clock();
        // The first scan at once; under the fake clock a settle waits for it.
        let ticks = clock.ticks_at(clock.now(), config.billing.scan_interval);
        tracing::info!(url = %config.billing.url, every = %humantime::format_duration(config.billing.scan_interval), "Reading billing exports.");
        tokio::spawn(source.run(ticks, stopping(shutdown_rx.clone())));
    }
    let checkpointing = tokio::spawn(keep_checkpointing(
        checkpoints.clone(),
        aggregator.clock().ticks(config.storage.checkpoint_interval),
        stopping(shutdown_rx.clone()),
    ));
    let kafka = crate::kafka::start(
        &config,
        kafka_ingest,
        &aggregator,
        checkpoints.clone(),
        hooks.clone(),
        kafka_status,
        landing,
    )?;
    ready.store(true, Ordering::Release);
    if let Some(path) = &args.ready_file {
        write_ready_file(path, &addresses)?;
    }
    tracing::info!(
        otlp_grpc = %addresses.otlp_grpc,
        otlp_http = %addresses.otlp_http,
        api = %addresses.api,
        version = env!("CARGO_PKG_VERSION"),
        "recmeter is ready."
    );
    let demo =
        workload.map(|w| w.start(addresses, aggregator.clock().clone(), shutdown_rx.clone()));

    let outcome = tokio::select! {
        () = termination() => {
            tracing::info!("Shutting down: finishing in-flight requests.");
            Ok(())
        }
        Some(ended) = servers.join_next() => match ended {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(Error::ServerStopped("a server stopped unexpectedly".into())),
            Err(e) => Err(Error::ServerStopped(format!("a server task failed: {e}"))),
        },
    };
    ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    if let Some(kafka) = &kafka {
        kafka.stop_reading();
    }
    preparing.abort();
    sampling.abort();
    evaluating.abort();
    costing.abort();
    if let Some(demo) = demo {
        demo.stop().await;
    }
    let deadline = tokio::time::Instant::now() + config.service.shutdown_timeout;
    let drained = tokio::time::timeout_at(deadline, async {
        while let Some(ended) = servers.join_next().await {
            if let Ok(Err(e)) = ended {
                tracing::warn!(error = %e, "A server stopped with an error during shutdown.");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("Shutdown deadline passed with requests still in flight; abandoning them.");
        servers.abort_all();
    }
    // The outbox drains while the aggregator can still log the receipts.
    if let Some(mut delivering) = delivering
        && tokio::time::timeout_at(deadline, &mut delivering)
            .await
            .is_err()
    {
        tracing::warn!(
            "Shutdown deadline passed while delivering to PagerDuty; the rest goes after the next start."
        );
        delivering.abort();
        let _ = delivering.await;
    }
    // The Kafka source checkpoints and commits what it counted, then leaves its group, before
    // the aggregator drains.
    if let Some(kafka) = kafka {
        kafka
            .stop(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
    }
    drop(aggregator);
    if tokio::time::timeout_at(deadline, worker).await.is_err() {
        tracing::warn!("Shutdown deadline passed before the aggregator drained its queue.");
    }
    if tokio::time::timeout_at(deadline, checkpointing)
        .await
        .is_err()
    {
        tracing::warn!("Shutdown deadline passed during a checkpoint.");
    }
    // The last checkpoint holds everything counted, so the next start replays nothing.
    match tokio::time::timeout_at(deadline, checkpoints.checkpoint()).await {
        Ok(Ok(stats)) => tracing::info!(
            checkpoint = stats.id,
            wal_seq = stats.wal_seq,
            "Final checkpoint written."
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "The final checkpoint failed; the next start replays the WAL.")
        }
        Err(_) => tracing::warn!(
            "Shutdown deadline passed before the final checkpoint; the next start replays the WAL."
        ),
    }
    tracing::info!("recmeter stopped.");
    outcome
}

/// Locks the WAL directory, restores the latest checkpoint, replays the WAL after it, and
/// starts the aggregator over the result, logging what it found.
async fn restore(
    config: &Config,
    clock: Arc<Clock>,
    participants: Participants,
    hooks: Arc<Hooks>,
    telemetry: Arc<Telemetry>,
    truncate_at_corruption: bool,
) -> Result<(
    AggregatorHandle,
    tokio::task::JoinHandle<()>,
    Arc<Checkpointer>,
    Arc<History>,
)> {
    let layout = Layout {
        significant_digits: config.aggregator.significant_digits,
        dimensions: config.ingest.dimension_labels(),
        thresholds: config.aggregator.threshold_columns(),
    };
    let empty = Aggregator::new(&config.ingest, &config.aggregator, clock, telemetry.clone())?
        .with_metrics(&config.metrics)
        .with_participants(participants);
    tracing::info!(
        storage = %config.storage.url,
        wal = %config.wal.dir.display(),
        "Restoring the latest checkpoint and replaying the WAL."
    );
    let started = std::time::Instant::now();
    let opened = durability::open(
        &config.wal,
        &config.storage,
        &layout,
        empty,
        hooks.clone(),
        telemetry.clone(),
        durability::OpenOptions {
            truncate_at_corruption,
            // The participants that own files (the billing ledger) register their prefixes.
            swept_prefixes: &[],
        },
    )
    .await?;
    tracing::info!(
        checkpoint = opened.manifest.as_ref().map_or(0, |m| m.id),
        series = opened.restored.series,
        rows = opened.restored.rows,
        wal_entries = opened.replayed.entries,
        wal_records = opened.replayed.records,
        torn_segments = opened.replayed.torn,
        wal_records_dropped = opened.replayed.dropped_records,
        unreferenced_files_deleted = opened.deleted,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Restored."
    );
    // Component events are logged in both durability modes; batches only with `wal`.
    let (aggregator, worker) = AggregatorHandle::spawn(
        opened.aggregator,
        config.aggregator.queue_capacity,
        hooks.clone(),
        Some(opened.wal.clone()),
        config.wal.durability == Durability::Wal,
    );
    let wal = opened.wal;
    let history = Arc::new(History::new(opened.store.objects.clone()));
    let checkpoints = Arc::new(
        Checkpointer::new(
            opened.store,
            aggregator.state().clone(),
            layout,
            hooks,
            telemetry,
            opened.manifest,
            Box::new(move |covered| wal.truncate(covered)),
        )
        .with_retention(config.retention.clone())
        .with_history(history.clone()),
    );
    Ok((aggregator, worker, checkpoints, history))
}

/// Takes a checkpoint, then compacts, at every tick of `ticks` (`storage.checkpoint_interval`
/// on recmeter's clock) until `done`; failures are logged when they start and when they stop,
/// and the rows go to the next attempt. Under the fake clock it runs when the clock is
/// advanced by the interval or more, before `/-/test/clock` answers.
async fn keep_checkpointing(
    checkpoints: Arc<Checkpointer>,
    mut ticks: Ticks,
    done: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(done);
    let mut failing = false;
    let mut compaction_failing = false;
    loop {
        tokio::select! {
            () = &mut done => return,
            _ = ticks.tick() => {}
        }
        // Both free at once what they decoded and encoded; those pages go back to the system
        // rather than staying resident among new allocations (ADR 013).
        let returning = ReturnFreedPages::hold();
        match checkpoints.checkpoint().await {
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "Checkpoint failed; retrying at the next interval.");
            }
            Ok(_) if failing => {
                failing = false;
                tracing::info!("Checkpoints succeed again.");
            }
            _ => {}
        }
        // Retention and compaction go by the manifest in force, after each checkpoint.
        match checkpoints.compact().await {
            Err(e) if !compaction_failing => {
                compaction_failing = true;
                tracing::error!(error = %e, "Compaction failed; the files in force are unchanged; retrying after the next checkpoint.");
            }
            Ok(_) if compaction_failing => {
                compaction_failing = false;
                tracing::info!("Compactions succeed again.");
            }
            _ => {}
        }
        drop(returning);
    }
}

/// Every second of recmeter's clock, merges or moves on the final hours of `/metrics`' long
/// windows when the clock has made an hour final or moved a window's first hour, so scrapes
/// seldom wait for it. Under the fake clock it runs when the clock is advanced, before
/// `/-/test/clock` answers. `failing` tells whether the last attempt failed.
async fn keep_prepared(engine: Arc<QueryEngine>, mut ticks: Ticks, mut failing: bool) {
    loop {
        ticks.tick().await;
        // Said once when it starts failing and once when it works again, not every second.
        match engine.prepare(&METRICS_WINDOWS).await {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "Cannot merge the final hours ahead of scrapes; scrapes will.");
            }
            Ok(()) if failing => {
                failing = false;
                tracing::info!("Merging the final hours ahead of scrapes again.");
            }
            _ => {}
        }
    }
}

/// Runs `work` at every tick of `ticks`, saying once when it starts failing (`failing`, with
/// the error) and once when it works again (`again`), not at every tick: the SLO evaluation
/// (`slo.evaluation_interval`) and the cost evaluation (`cost.evaluation_interval`, and when
/// the billing ledger nudges it). Under the fake clock each runs before `/-/test/clock` answers.
async fn keep_running<F, Fut, T>(
    mut ticks: Ticks,
    failing: &'static str,
    again: &'static str,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, recmeter_aggregator::Error>>,
{
    let mut failed = false;
    loop {
        ticks.tick().await;
        match work().await {
            Err(e) if !failed => {
                failed = true;
                tracing::warn!(error = %e, "{failing}");
            }
            Ok(_) if failed => {
                failed = false;
                tracing::info!("{again}");
            }
            _ => {}
        }
    }
}

/// Seeds the demo's history and bill (see `demo_history`), then checkpoints so the store holds
/// them. A failure leaves a demo without history, said in the log.
async fn seed_demo(config: &Config, aggregator: &AggregatorHandle, checkpoints: &Checkpointer) {
    if recmeter_aggregator::state::lock(aggregator.state()).series_active() > 0 {
        return;
    }
    let url = config.billing.url.trim();
    let bucket = match url.strip_prefix("file://") {
        Some(path) => Some(PathBuf::from(path)),
        None if !url.contains("://") => Some(PathBuf::from(url)),
        None => None,
    };
    let started = std::time::Instant::now();
    match crate::demo_history::seed(
        aggregator.state(),
        bucket.as_deref(),
        aggregator.clock().now(),
    ) {
        Ok(seeded) => {
            if let Err(e) = checkpoints.checkpoint().await {
                tracing::warn!(error = %e, "Demo: cannot checkpoint the seeded history; it stays in memory until the next checkpoint.");
            }
            tracing::info!(
                days = crate::demo_history::DAYS,
                hour_rows = seeded.rows,
                recommendations = seeded.recommendations,
                bill_lines = seeded.lines,
                bill = ?seeded.bill,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Demo: seeded history and its bill."
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "Demo: cannot seed history; the demo starts without it.")
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Writes the addresses atomically (a temporary file in the same directory, then rename), so
/// a reader never sees half of it.
fn write_ready_file(path: &Path, addresses: &Addresses) -> Result<()> {
    let err = |source| Error::ReadyFile {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    serde_json::to_writer_pretty(&mut file, addresses).map_err(|e| err(e.into()))?;
    file.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
