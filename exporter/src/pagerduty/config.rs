//! `[pagerduty]`: where recmeter's own SLO alerts go, and with which routing keys.

use std::path::PathBuf;
use std::time::Duration;

use recmeter_aggregator::InvalidField;
use recmeter_aggregator::auth::{Secret, secret_from_key_or_file};
use recmeter_aggregator::slo::Severity;
use serde::{Deserialize, Serialize};

/// The Events API's host.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com";

/// The length of an Events API v2 routing (integration) key.
pub const ROUTING_KEY_CHARS: usize = 32;

/// `[pagerduty]` configuration. Off unless a routing key is set. Each key comes from the key
/// itself (set it through the environment, `RECMETER_PAGERDUTY__ROUTING_KEY`, rather than in
/// the file) or from a file holding only the key; keys are never logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagerDutyConfig {
    /// The Events API's base URL; events go to `<url>/v2/enqueue`.
    /// Default: `"https://events.pagerduty.com"`.
    pub url: String,
    /// The routing key of every severity without a key of its own. Default: unset.
    pub routing_key: Option<Secret>,
    /// File holding `routing_key`. Default: unset.
    pub routing_key_file: Option<PathBuf>,
    /// The routing key of `page` alerts, when they go to another service. Default: unset.
    pub page_routing_key: Option<Secret>,
    /// File holding `page_routing_key`. Default: unset.
    pub page_routing_key_file: Option<PathBuf>,
    /// The routing key of `ticket` alerts. Default: unset.
    pub ticket_routing_key: Option<Secret>,
    /// File holding `ticket_routing_key`. Default: unset.
    pub ticket_routing_key_file: Option<PathBuf>,
    /// The routing key of `no_data` alerts. Default: unset.
    pub no_data_routing_key: Option<Secret>,
    /// File holding `no_data_routing_key`. Default: unset.
    pub no_data_routing_key_file: Option<PathBuf>,
    /// Links put on every trigger, such as the SLO dashboard's URL. Default: none.
    pub links: Vec<String>,
    /// `payload.source` of every event: where the alert comes from. Default: the host name.
    pub source: Option<String>,
    /// How long one delivery attempt may take before it counts as a network error.
    /// Default: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for PagerDutyConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            routing_key: None,
            routing_key_file: None,
            page_routing_key: None,
            page_routing_key_file: None,
            ticket_routing_key: None,
            ticket_routing_key_file: None,
            no_data_routing_key: None,
            no_data_routing_key_file: None,
            links: Vec::new(),
            source: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The severities, in the order [`Routing`] keeps their keys.
const SEVERITIES: [Severity; 3] = [Severity::Page, Severity::Ticket, Severity::NoData];

/// The routing key of each severity, files read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    keys: [Option<Secret>; 3],
}

impl Routing {
    /// One key for every severity.
    pub fn all(key: Secret) -> Self {
        Self {
            keys: [Some(key.clone()), Some(key.clone()), Some(key)],
        }
    }

    /// The routing key of `severity`'s alerts; `None`: they are not sent.
    pub fn key(&self, severity: Severity) -> Option<&Secret> {
        let i = SEVERITIES.iter().position(|s| *s == severity)?;
        self.keys[i].as_ref()
    }

    /// The severities whose alerts are sent.
    pub fn routed(&self) -> Vec<Severity> {
        SEVERITIES
            .iter()
            .zip(&self.keys)
            .filter(|(_, k)| k.is_some())
            .map(|(s, _)| *s)
            .collect()
    }

    /// Whether any alert is sent.
    pub fn is_on(&self) -> bool {
        self.keys.iter().any(Option::is_some)
    }

    /// Each distinct key, with the severities it routes.
    pub fn distinct(&self) -> Vec<(Secret, Vec<Severity>)> {
        let mut out: Vec<(Secret, Vec<Severity>)> = Vec::new();
        for (severity, key) in SEVERITIES.iter().zip(&self.keys) {
            let Some(key) = key else { continue };
            match out.iter_mut().find(|(k, _)| k == key) {
                Some((_, severities)) => severities.push(*severity),
                None => out.push((key.clone(), vec![*severity])),
            }
        }
        out
    }
}

impl PagerDutyConfig {
    /// The routing keys in force, key files read; every problem is reported.
    pub fn routing(&self) -> Result<Routing, Vec<InvalidField>> {
        let mut errors = Vec::new();
        let mut one = |name: &str, key: &Option<Secret>, file: &Option<PathBuf>| {
            let key_name = format!("pagerduty.{name}");
            match secret_from_key_or_file(&key_name, key.as_ref(), file.as_deref(), Secret::new) {
                Ok(Some(key)) if key.expose().chars().count() != ROUTING_KEY_CHARS => {
                    let at = if file.is_some() {
                        format!("{key_name}_file")
                    } else {
                        key_name
                    };
                    errors.push(InvalidField::new(
                        at,
                        format!(
                            "a routing key has {ROUTING_KEY_CHARS} characters, this one {}: copy \
                             the Integration Key of the service's Events API v2 integration",
                            key.expose().chars().count()
                        ),
                    ));
                    None
                }
                Ok(key) => key,
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        let default = one("routing_key", &self.routing_key, &self.routing_key_file);
        let page = one(
            "page_routing_key",
            &self.page_routing_key,
            &self.page_routing_key_file,
        );
        let ticket = one(
            "ticket_routing_key",
            &self.ticket_routing_key,
            &self.ticket_routing_key_file,
        );
        let no_data = one(
            "no_data_routing_key",
            &self.no_data_routing_key,
            &self.no_data_routing_key_file,
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Routing {
            keys: [
                page.or_else(|| default.clone()),
                ticket.or_else(|| default.clone()),
                no_data.or(default),
            ],
        })
    }

    /// `<url>/v2/enqueue`.
    pub fn endpoint(&self) -> String {
        format!("{}/v2/enqueue", self.url.trim_end_matches('/'))
    }

    /// Cross-field checks, key files read.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = self.routing().err().unwrap_or_default();
        match http_url(&self.url) {
            Err(e) => errors.push(InvalidField::new("pagerduty.url", e)),
            Ok(url) if !matches!(url.path(), "" | "/") || url.query().is_some() => {
                errors.push(InvalidField::new(
                    "pagerduty.url",
                    format!(
                        "`{}` has a path or query; give the base URL only (e.g. {DEFAULT_URL}): \
                         recmeter posts to <url>/v2/enqueue",
                        recmeter_aggregator::error::clip(&self.url, 128)
                    ),
                ));
            }
            Ok(_) => {}
        }
        for (i, link) in self.links.iter().enumerate() {
            if let Err(e) = http_url(link).map(drop) {
                errors.push(InvalidField::new(format!("pagerduty.links[{i}]"), e));
            }
        }
        if let Some(source) = &self.source
            && (source.trim().is_empty() || source.len() > 255)
        {
            errors.push(InvalidField::new(
                "pagerduty.source",
                "must be 1 to 255 bytes (the event's payload.source)",
            ));
        }
        if self.timeout < Duration::from_secs(1) || self.timeout > Duration::from_secs(60) {
            errors.push(InvalidField::new(
                "pagerduty.timeout",
                "must be from 1s to 60s",
            ));
        }
        errors
    }
}

/// `text` as an absolute `http` or `https` URL with a host.
fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let clipped = recmeter_aggregator::error::clip(text, 128);
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{clipped}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{clipped}` is not an http(s) URL with a host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "R0123456789abcdef0123456789abcde";

    #[test]
    fn severities_fall_back_to_the_default_key() {
        let config = PagerDutyConfig {
            routing_key: Secret::new(KEY),
            page_routing_key: Secret::new(&KEY.replace('R', "P")),
            ..PagerDutyConfig::default()
        };
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        let routing = config.routing().unwrap();
        assert_eq!(routing.key(Severity::Ticket).unwrap().expose(), KEY);
        assert!(
            routing
                .key(Severity::Page)
                .unwrap()
                .expose()
                .starts_with('P')
        );
        let distinct = routing.distinct();
        assert_eq!(distinct.len(), 2);
        assert_eq!(distinct[1].1, [Severity::Ticket, Severity::NoData]);
        assert!(!PagerDutyConfig::default().routing().unwrap().is_on());
        assert_eq!(
            PagerDutyConfig {
                url: "http://127.0.0.1:9/".into(),
                ..PagerDutyConfig::default()
            }
            .endpoint(),
            "http://127.0.0.1:9/v2/enqueue"
        );
    }

    #[test]
    fn problems_are_named_and_keys_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let path = PagerDutyConfig {
            url: "https://events.pagerduty.com/v2/enqueue".into(),
            ..PagerDutyConfig::default()
        };
        assert!(path.validate()[0].message.contains("base URL only"));
        let config = PagerDutyConfig {
            url: "ftp://events".into(),
            routing_key: Secret::new("too-short-secret"),
            ticket_routing_key: Secret::new(KEY),
            ticket_routing_key_file: Some(empty.clone()),
            no_data_routing_key_file: Some(empty),
            links: vec!["not a url".into()],
            source: Some(" ".into()),
            timeout: Duration::ZERO,
            ..PagerDutyConfig::default()
        };
        let errors = config.validate();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pagerduty.routing_key",
                "pagerduty.ticket_routing_key_file",
                "pagerduty.no_data_routing_key_file",
                "pagerduty.url",
                "pagerduty.links[0]",
                "pagerduty.source",
                "pagerduty.timeout",
            ]
        );
        let all = format!("{errors:?}");
        assert!(
            !all.contains("too-short-secret") && !all.contains(KEY),
            "{all}"
        );
    }
}
