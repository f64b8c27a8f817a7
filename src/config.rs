//! `recmeter.toml`: one section per part, each part's own `Config` struct. Loading collects every
//! problem at once (unknown keys and sections, wrong types, cross-field rules, bad environment
//! overrides) so `recmeter validate` can list them all.
//!
//! Scalar keys can be overridden from the environment as `RECMETER_<SECTION>__<KEY>`
//! (`RECMETER_OTLP__GRPC_ADDRESS=0.0.0.0:4317`); arrays and tables are file-only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use recmeter_aggregator::auth::secret_from_key_or_file;
use recmeter_aggregator::durability::{RetentionConfig, StorageConfig, WalConfig};
use recmeter_aggregator::slo::SloConfig;
use recmeter_aggregator::unit_cost::CostConfig;
use recmeter_aggregator::{
    AggregatorConfig, BearerToken, IngestConfig, InvalidField, MetricsConfig, SqlConfig,
};
use recmeter_collector::sources::billing::BillingConfig;
use recmeter_collector::sources::kafka::KafkaConfig;
use recmeter_collector::sources::otlp::OtlpConfig;
use recmeter_exporter::ApiConfig;
use recmeter_exporter::pagerduty::PagerDutyConfig;
use recmeter_exporter::promql::QueryConfig;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "RECMETER_";

/// The process environment as text. Names and values that are not UTF-8 are read lossily, so a
/// broken `RECMETER_*` value is reported as invalid rather than crashing start-up.
pub fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// OTLP listeners.
    pub otlp: OtlpConfig,
    /// The HTTP API listener (`/metrics`, health).
    pub api: ApiConfig,
    /// Which spans are requests and how they are keyed.
    pub ingest: IngestConfig,
    /// Which OTLP metrics count requests and recommendations.
    pub metrics: MetricsConfig,
    /// In-memory rollup limits and precision.
    pub aggregator: AggregatorConfig,
    /// The SQL engine behind `/api/v1/sql`.
    pub sql: SqlConfig,
    /// The Prometheus query API (`/api/v1/query` and the others).
    pub query: QueryConfig,
    /// Logging.
    pub log: LogConfig,
    /// Process lifecycle.
    pub service: ServiceConfig,
    /// Bearer tokens for the ingest and API ports.
    pub auth: AuthConfig,
    /// The write-ahead log.
    pub wal: WalConfig,
    /// Where checkpoints go.
    pub storage: StorageConfig,
    /// How long the store keeps history, and how its files are compacted.
    pub retention: RetentionConfig,
    /// Service level objectives and their burn-rate alerts.
    pub slo: SloConfig,
    /// Where recmeter's own SLO alerts go.
    pub pagerduty: PagerDutyConfig,
    /// Where the clouds' billing exports are read from.
    pub billing: BillingConfig,
    /// Cost per recommendation: which bill lines belong to which component.
    pub cost: CostConfig,
    /// Traces, metric points and cost lines from Kafka topics.
    pub kafka: KafkaConfig,
}

/// `[auth]` configuration. Each token comes from the key itself (set it through the
/// environment, `RECMETER_AUTH__INGEST_TOKEN`, rather than in the file) or from a file holding
/// only the token. Tokens are never logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Token OTLP senders must present on :4317 and :4318 (`Authorization: Bearer <token>`;
    /// gRPC metadata `authorization`). Default: unset, ingest is open.
    pub ingest_token: Option<BearerToken>,
    /// File holding the ingest token (surrounding whitespace ignored). Default: unset.
    pub ingest_token_file: Option<PathBuf>,
    /// Token readers must present for `/metrics`, `/api/v1/*` and `/`; `/healthz` and `/readyz`
    /// stay open. Default: unset, the API is open.
    pub api_token: Option<BearerToken>,
    /// File holding the API token. Default: unset.
    pub api_token_file: Option<PathBuf>,
}

/// The tokens in force.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub ingest: Option<BearerToken>,
    pub api: Option<BearerToken>,
}

impl AuthConfig {
    /// Reads token files; every problem is reported.
    pub fn tokens(&self) -> Result<Tokens, Vec<InvalidField>> {
        let mut errors = Vec::new();
        let mut one = |name: &str, token: &Option<BearerToken>, file: &Option<PathBuf>| {
            secret_from_key_or_file(
                &format!("auth.{name}"),
                token.as_ref(),
                file.as_deref(),
                BearerToken::new,
            )
            .unwrap_or_else(|e| {
                errors.push(e);
                None
            })
        };
        let tokens = Tokens {
            ingest: one("ingest_token", &self.ingest_token, &self.ingest_token_file),
            api: one("api_token", &self.api_token, &self.api_token_file),
        };
        if errors.is_empty() {
            Ok(tokens)
        } else {
            Err(errors)
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log filter in `tracing` syntax (`info`, `recmeter_collector=debug`); `RUST_LOG` wins
    /// when set. Default: `"info"`.
    pub level: String,
    /// `"text"` or `"json"` (one object per line). Default: `"text"`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// `[service]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// How long shutdown waits for in-flight requests, queued batches and PagerDuty events
    /// waiting in the outbox. Default: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// This instance's name: the scope of its PagerDuty dedup keys
    /// (`recmeter/<instance>/<slo>/<severity>`). Keep it stable across restarts. Default: the
    /// host name.
    pub instance: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(10),
            instance: None,
        }
    }
}

impl ServiceConfig {
    /// `instance`, or the host name.
    pub fn instance(&self) -> String {
        self.instance.clone().unwrap_or_else(host_name)
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        if let Some(instance) = &self.instance
            && !instance_safe(instance)
        {
            errors.push(InvalidField::new(
                "service.instance",
                format!(
                    "`{}` is not an instance name: 1 to 64 characters of letters, digits, `.`, `_` and `-`",
                    recmeter_aggregator::error::clip(instance, 64)
                ),
            ));
        }
        errors
    }
}

/// Whether `name` can scope dedup keys: 1 to 64 of `[A-Za-z0-9._-]`.
fn instance_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The host name (the kernel's, else `HOSTNAME`), or `recmeter` when neither is a usable
/// instance name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| instance_safe(h))
        .unwrap_or_else(|| "recmeter".to_owned())
}

/// Whether the stores at `a` and `b` share objects: the same place, or one inside the other.
fn overlaps(a: &str, b: &str) -> bool {
    use recmeter_aggregator::store::object::{Location, parse_url};
    let (Ok(a), Ok(b)) = (parse_url(a), parse_url(b)) else {
        return false;
    };
    let nested = |x: &str, y: &str| {
        let (x, y) = (x.trim_matches('/'), y.trim_matches('/'));
        x.is_empty()
            || y.is_empty()
            || x == y
            || y.starts_with(&format!("{x}/"))
            || x.starts_with(&format!("{y}/"))
    };
    match (a, b) {
        (Location::Local(x), Location::Local(y)) => {
            let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let (x, y) = (absolute(x), absolute(y));
            x.starts_with(&y) || y.starts_with(&x)
        }
        (
            Location::S3 {
                bucket: x,
                prefix: px,
            },
            Location::S3 {
                bucket: y,
                prefix: py,
            },
        )
        | (
            Location::Gcs {
                bucket: x,
                prefix: px,
            },
            Location::Gcs {
                bucket: y,
                prefix: py,
            },
        ) => x == y && nested(&px, &py),
        _ => false,
    }
}

impl Config {
    /// Cross-field checks of every section.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = Vec::new();
        errors.extend(self.otlp.validate());
        errors.extend(self.api.validate());
        errors.extend(self.ingest.validate());
        errors.extend(self.metrics.validate());
        errors.extend(self.aggregator.validate());
        errors.extend(self.sql.validate());
        errors.extend(self.query.validate());
        errors.extend(self.wal.validate());
        errors.extend(self.storage.validate());
        errors.extend(self.retention.validate());
        errors.extend(self.slo.validate(&self.aggregator));
        errors.extend(self.service.validate());
        errors.extend(self.pagerduty.validate());
        errors.extend(self.billing.validate());
        errors.extend(self.cost.validate());
        errors.extend(self.kafka.validate());
        if self.billing.is_on()
            && let Err(e) = recmeter_aggregator::store::object::parse_url(&self.billing.url)
        {
            errors.push(InvalidField::new(
                "billing.url",
                e.to_string().replace("storage.url", "billing.url"),
            ));
        }
        if self.billing.is_on() && overlaps(&self.billing.url, &self.storage.url) {
            errors.push(InvalidField::new(
                "billing.url",
                "is storage.url, or inside it, or holds it: the billing source would read \
                 recmeter's own files; give the exports a bucket or folder of their own",
            ));
        }
        if let Err(e) = self.auth.tokens() {
            errors.extend(e);
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errors.push(InvalidField::new(
                "log.level",
                format!("`{}` is not a valid log filter", self.log.level),
            ));
        }
        let addresses = [
            ("otlp.grpc_address", self.otlp.grpc_address),
            ("otlp.http_address", self.otlp.http_address),
            ("api.address", self.api.address),
        ];
        for (i, (key, a)) in addresses.iter().enumerate() {
            if a.port() != 0 && addresses[..i].iter().any(|(_, b)| b == a) {
                errors.push(InvalidField::new(
                    *key,
                    format!("{a} is already used by another listener"),
                ));
            }
        }
        errors
    }

    /// Loads the file at `path` (or the embedded defaults when `None`), applies environment
    /// overrides from `env`, and checks everything. Returns every problem found.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Vec<InvalidField>> {
        let mut table = match path {
            None => Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    vec![InvalidField::new(
                        path.display().to_string(),
                        format!("cannot read: {e}"),
                    )]
                })?;
                text.parse::<Table>().map_err(|e| {
                    // Where and what, without the line itself: it may hold a secret.
                    let at = e.span().map_or_else(String::new, |span| {
                        let before = text.get(..span.start).unwrap_or(&text);
                        let line = before.matches('\n').count() + 1;
                        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                        format!(" at line {line}, column {column}")
                    });
                    vec![InvalidField::new(
                        path.display().to_string(),
                        format!("not valid TOML{at}: {}", e.message().trim()),
                    )]
                })?
            }
        };
        let defaults = defaults_table();
        let mut errors = apply_env(&mut table, &defaults, env);
        // Keys that are wrong on their own are reported and left out, so the cross-field
        // checks below still run on the rest and every problem is reported at once.
        errors.extend(check_keys(&mut table, &defaults));
        match Value::Table(table).try_into::<Config>() {
            Ok(config) => {
                errors.extend(config.validate());
                if errors.is_empty() {
                    Ok(config)
                } else {
                    Err(errors)
                }
            }
            Err(e) => {
                errors.push(InvalidField::new("config", e.message().to_owned()));
                Err(errors)
            }
        }
    }
}

fn defaults_table() -> Table {
    match Value::try_from(Config::default()) {
        Ok(Value::Table(t)) => t,
        // The defaults always serialize to a table; an empty one only weakens env typing.
        _ => Table::new(),
    }
}

/// Applies `RECMETER_<SECTION>__<KEY>` overrides, typed like the default value of the key.
fn apply_env(
    table: &mut Table,
    defaults: &Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<InvalidField> {
    let mut errors = Vec::new();
    let mut vars: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let Some((section, key)) = rest.split_once("__") else {
            errors.push(InvalidField::new(
                &name,
                "environment overrides are named RECMETER_<SECTION>__<KEY>",
            ));
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let Some(Value::Table(default_section)) = defaults.get(&section) else {
            errors.push(InvalidField::new(
                &name,
                format!("unknown section `{section}`"),
            ));
            continue;
        };
        let value = match default_section.get(&key) {
            Some(Value::Array(_) | Value::Table(_)) => {
                errors.push(InvalidField::new(
                    &name,
                    format!("`{section}.{key}` is not a scalar; set it in the config file"),
                ));
                continue;
            }
            Some(Value::Integer(_)) => match raw.trim().parse::<i64>() {
                Ok(i) => Value::Integer(i),
                Err(_) => {
                    errors.push(InvalidField::new(
                        &name,
                        format!("`{raw}` is not an integer"),
                    ));
                    continue;
                }
            },
            Some(Value::Float(_)) => match raw.trim().parse::<f64>() {
                Ok(f) => Value::Float(f),
                Err(_) => {
                    errors.push(InvalidField::new(&name, format!("`{raw}` is not a number")));
                    continue;
                }
            },
            Some(Value::Boolean(_)) => match raw.trim() {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                _ => {
                    errors.push(InvalidField::new(
                        &name,
                        format!("`{raw}` is not true or false"),
                    ));
                    continue;
                }
            },
            // Strings, and optional keys without a default, take the text as it is.
            _ => Value::String(raw),
        };
        match table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()))
        {
            Value::Table(t) => {
                t.insert(key, value);
            }
            _ => errors.push(InvalidField::new(&section, "must be a table")),
        }
    }
    errors
}

/// Checks every key on its own against the defaults, so each unknown key or wrong type is
/// reported by name, and removes the keys (or sections) found wrong.
fn check_keys(table: &mut Table, defaults: &Table) -> Vec<InvalidField> {
    let mut errors = Vec::new();
    let mut bad_sections = Vec::new();
    let mut bad_keys = Vec::new();
    for (section, value) in table.iter() {
        let Some(Value::Table(_)) = defaults.get(section) else {
            let known: Vec<_> = defaults.keys().map(String::as_str).collect();
            errors.push(InvalidField::new(
                section,
                format!("unknown section; expected one of: {}", known.join(", ")),
            ));
            bad_sections.push(section.clone());
            continue;
        };
        let Value::Table(keys) = value else {
            errors.push(InvalidField::new(section, "must be a table ([section])"));
            bad_sections.push(section.clone());
            continue;
        };
        for (key, value) in keys {
            let at = format!("{section}.{key}");
            // An array of tables is checked entry by entry, so each entry's problem is named
            // (`slo.objectives[1].kind`); anything else as a whole.
            let tried: Vec<(String, Value)> = match value {
                Value::Array(entries) if entries.iter().all(Value::is_table) => entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (format!("{at}[{i}]"), Value::Array(vec![e.clone()])))
                    .collect(),
                _ => vec![(at.clone(), value.clone())],
            };
            let mut bad = false;
            for (place, value) in tried {
                let mut candidate = defaults.clone();
                if let Some(Value::Table(s)) = candidate.get_mut(section) {
                    s.insert(key.clone(), value);
                }
                if let Err(e) =
                    serde_path_to_error::deserialize::<_, Config>(Value::Table(candidate))
                {
                    // The path goes on past the key into the entry's field, where it can.
                    let path = e.path().to_string();
                    let field = path
                        .strip_prefix(&format!("{at}[0]"))
                        .filter(|rest| rest.starts_with('.'));
                    let place = match field {
                        Some(rest) => format!("{place}{rest}"),
                        None => place,
                    };
                    errors.push(InvalidField::new(place, e.inner().message().to_owned()));
                    bad = true;
                }
            }
            if bad {
                bad_keys.push((section.clone(), key.clone()));
            }
        }
    }
    for section in bad_sections {
        table.remove(&section);
    }
    for (section, key) in bad_keys {
        if let Some(Value::Table(keys)) = table.get_mut(&section) {
            keys.remove(&key);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<InvalidField>> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        Config::load(
            Some(file.path()),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    /// A file that is not TOML is reported by place, without echoing the line (which may
    /// hold a routing key or a token).
    #[test]
    fn a_toml_error_names_the_place_not_the_line() {
        let errors = load("[pagerduty]\nrouting_key = \"s3cret-value\n", &[]).unwrap_err();
        let text = errors[0].to_string();
        assert!(
            text.contains("not valid TOML at line 2") && !text.contains("s3cret"),
            "{text}"
        );
    }

    #[test]
    fn billing_is_checked() {
        let config = load(
            "[billing]\nurl = \"s3://bills/cur\"\nusd_rates = { EUR = \"1.0842\" }\n\
             [[billing.defaults]]\nprefix = \"gcp/\"\nprovider = \"Google Cloud\"\n",
            &[("RECMETER_BILLING__SCAN_INTERVAL", "15m")],
        )
        .unwrap();
        assert!(config.billing.is_on());
        assert_eq!(config.billing.scan_interval, Duration::from_secs(900));
        assert_eq!(config.billing.rates().unwrap()["EUR"], 1_084_200_000_000);
        // A float rate is refused by its type; the store's own folder, a bad rate and an empty
        // default are named.
        let errors = load("[billing]\nusd_rates = { EUR = 1.08 }\n", &[]).unwrap_err();
        assert!(format!("{errors:?}").contains("usd_rates"), "{errors:?}");
        assert!(overlaps("data", "./data/bills"));
        assert!(overlaps("s3://b/recmeter", "s3://b"));
        assert!(!overlaps("s3://b/recmeter", "s3://b/bills"));
        assert!(!overlaps("s3://b/x", "gs://b/x"));
        let errors = load(
            "[billing]\nurl = \"./data/\"\nusd_rates = { EUR = \"x\" }\n\
             [[billing.defaults]]\nprefix = \"/gcp\"\n",
            &[],
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "billing.usd_rates.EUR",
                "billing.defaults[0]",
                "billing.defaults[0]",
                "billing.url"
            ]
        );
    }

    #[test]
    fn pagerduty_and_the_instance_are_checked() {
        let key = "R0123456789abcdef0123456789abcde";
        let config = load(
            "[service]\ninstance = \"recmeter-0\"\n[pagerduty]\nlinks = [\"https://g.example/d\"]\n",
            &[("RECMETER_PAGERDUTY__ROUTING_KEY", key)],
        )
        .unwrap();
        assert_eq!(config.service.instance(), "recmeter-0");
        assert!(config.pagerduty.routing().unwrap().is_on());
        let errors = load(
            "[service]\ninstance = \"a b/c\"\n",
            &[("RECMETER_PAGERDUTY__ROUTING_KEY", "short")],
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["service.instance", "pagerduty.routing_key"]);
        assert!(!format!("{errors:?}").contains("short\""), "{errors:?}");
        assert!(instance_safe(&host_name()));
    }

    #[test]
    fn embedded_defaults_load() {
        assert_eq!(Config::load(None, []).unwrap(), Config::default());
    }

    #[test]
    fn the_example_file_is_valid_and_matches_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/recmeter.example.toml");
        let config = Config::load(Some(Path::new(example)), []).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errors = load(
            r#"
            [otlp]
            grpc_address = "nowhere"
            colour = "blue"
            [ingest]
            max_span_age = "0s"
            [aggregator]
            significant_digits = 5
            [nonsense]
            x = 1
            "#,
            &[("RECMETER_AGGREGATOR__MAX_SERIES", "many")],
        )
        .unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"otlp.grpc_address"), "{errors:?}");
        assert!(keys.contains(&"otlp.colour"), "{errors:?}");
        assert!(keys.contains(&"nonsense"), "{errors:?}");
        assert!(
            keys.contains(&"RECMETER_AGGREGATOR__MAX_SERIES"),
            "{errors:?}"
        );
        // Cross-field checks run on the sound keys alongside the broken ones.
        assert!(keys.contains(&"ingest.max_span_age"), "{errors:?}");
        assert!(
            keys.contains(&"aggregator.significant_digits"),
            "{errors:?}"
        );
        assert_eq!(errors.len(), 6, "{errors:?}");
    }

    #[test]
    fn series_limits_are_checked() {
        let errors = load(
            "[aggregator]\nmax_series_per_service = 0\n",
            &[("RECMETER_AGGREGATOR__MAX_SERIES", "0")],
        )
        .unwrap_err();
        let messages: Vec<_> = errors.iter().map(ToString::to_string).collect();
        for text in [
            "aggregator.max_series: must be at least 1",
            "aggregator.max_series_per_service: must be at least 1",
        ] {
            assert!(messages.iter().any(|m| m.contains(text)), "{messages:?}");
        }
        let config = load(
            "",
            &[("RECMETER_AGGREGATOR__MAX_SERIES_PER_SERVICE", "250")],
        )
        .unwrap();
        assert_eq!(config.aggregator.max_series_per_service, 250);
        assert_eq!(config.aggregator.series_reserve(), 40);
    }

    #[test]
    fn metrics_rules_are_checked() {
        let errors = load(
            r#"
            [metrics]
            max_streams = 0
            recommendation_metrics = ["recs.count"]
            [[metrics.latency]]
            name = "latency"
            unit = "furlong"
            [[metrics.latency]]
            name = "latency"
            [[metrics.latency]]
            name = "recs.count"
            "#,
            &[],
        )
        .unwrap_err();
        let messages: Vec<_> = errors.iter().map(ToString::to_string).collect();
        let has = |text: &str| messages.iter().any(|m| m.contains(text));
        assert!(
            has("metrics.max_streams: must be at least 1"),
            "{messages:?}"
        );
        assert!(has("`latency` has unit `furlong`"), "{messages:?}");
        assert!(has("names `latency` twice"), "{messages:?}");
        assert!(
            has("`recs.count` is also in metrics.recommendation_metrics"),
            "{messages:?}"
        );
        assert_eq!(errors.len(), 4, "{messages:?}");
    }

    #[test]
    fn slo_objectives_replace_the_defaults_and_errors_name_the_entry() {
        let config = load(
            r#"
            [slo]
            [[slo.objectives]]
            name = "checkout"
            kind = "availability"
            objective = 0.999
            services = ["checkout*"]
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(config.slo.objectives.len(), 1);
        assert_eq!(config.slo.objectives[0].alerts.len(), 4);
        assert_eq!(config.slo.objectives[0].endpoints, ["*"]);
        let errors = load(
            r#"
            [slo]
            evaluation_interval = "0s"
            [[slo.objectives]]
            name = "a"
            kind = "availability"
            objective = 0.999
            [[slo.objectives]]
            name = "b"
            kind = "speed"
            objective = 0.99
            [[slo.objectives]]
            name = "c"
            kind = "latency"
            objective = 0.99
            threshold = 0.3
            colour = "red"
            "#,
            &[],
        )
        .unwrap_err();
        let messages: Vec<_> = errors.iter().map(ToString::to_string).collect();
        let has = |text: &str| messages.iter().any(|m| m.starts_with(text));
        assert!(
            has("slo.evaluation_interval: must be at least 1s"),
            "{messages:?}"
        );
        assert!(
            has("slo.objectives[1].kind: unknown variant `speed`"),
            "{messages:?}"
        );
        assert!(has("slo.objectives[2]"), "{messages:?}");
        assert!(
            messages.iter().any(|m| m.contains("colour")),
            "{messages:?}"
        );
    }

    #[test]
    fn environment_overrides_scalars_only() {
        let config = load(
            "",
            &[
                ("RECMETER_OTLP__GRPC_ADDRESS", "127.0.0.1:0"),
                ("RECMETER_AGGREGATOR__MAX_SERIES", "50"),
                ("RECMETER_INGEST__MAX_SPAN_AGE", "2h"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.otlp.grpc_address.port(), 0);
        assert_eq!(config.aggregator.max_series, 50);
        assert_eq!(config.ingest.max_span_age, Duration::from_secs(7200));
        let errors = load("", &[("RECMETER_INGEST__DIMENSIONS", "a")]).unwrap_err();
        assert!(errors[0].message.contains("not a scalar"), "{errors:?}");
        let errors = load("", &[("RECMETER_NOPE", "a")]).unwrap_err();
        assert_eq!(errors[0].key, "RECMETER_NOPE");
    }
}
