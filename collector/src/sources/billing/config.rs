//! `[billing]`: where the billing exports are, how often they are scanned, the defaults of
//! files that do not name their provider or account, and the currencies lines may be in.

use std::collections::BTreeMap;
use std::time::Duration;

use recmeter_core::InvalidField;
use serde::{Deserialize, Serialize};

use super::decimal;
use super::read::Defaults;
use super::source::SourceConfig;

/// `[billing]` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// The bucket or folder the clouds deliver billing exports to: a plain path, `s3://…` or
    /// `gs://…`, opened as `storage.url` is. Default: empty, the billing source is off.
    pub url: String,
    /// How often the bucket is listed for new or restated exports, on recmeter's clock.
    /// Default: `"5m"`.
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
    /// USD per unit of each other currency lines may be billed in, as decimal strings (never
    /// TOML floats): `{ EUR = "1.0842" }`. A line in a currency not here (and not USD) is a
    /// reject. Default: empty.
    pub usd_rates: BTreeMap<String, String>,
    /// Defaults for files whose rows do not name their provider or billing account (a GCP
    /// CSV without `billing_account_id`, a FOCUS file without `BillingAccountId`), by the
    /// prefix of their path in the bucket; the longest matching prefix applies.
    pub defaults: Vec<PrefixDefaults>,
}

/// `[[billing.defaults]]`: one prefix's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixDefaults {
    /// Path prefix in the bucket (`gcp/`); empty matches every file.
    pub prefix: String,
    /// The provider of the files' rows (`Google Cloud`).
    pub provider: Option<String>,
    /// The billing account of the files' rows.
    pub billing_account_id: Option<String>,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            scan_interval: Duration::from_secs(300),
            usd_rates: BTreeMap::new(),
            defaults: Vec::new(),
        }
    }
}

impl BillingConfig {
    /// Whether the billing source runs.
    pub fn is_on(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// The rate table as exact decimals (units of 1e-12 USD per unit), by ISO 4217 code.
    pub fn rates(&self) -> Result<BTreeMap<String, i128>, Vec<InvalidField>> {
        let mut errors = Vec::new();
        let mut rates = BTreeMap::new();
        for (code, rate) in &self.usd_rates {
            let key = format!("billing.usd_rates.{code}");
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(InvalidField::new(
                    &key,
                    "a currency is its ISO 4217 code: three capital letters",
                ));
                continue;
            }
            match decimal::parse(rate) {
                Ok(r) if r > 0 => {
                    rates.insert(code.clone(), r);
                }
                Ok(_) => errors.push(InvalidField::new(&key, "a rate must be above 0")),
                Err(e) => errors.push(InvalidField::new(
                    &key,
                    format!("`{}` is not a decimal rate: {e}", clip(rate)),
                )),
            }
        }
        if errors.is_empty() {
            Ok(rates)
        } else {
            Err(errors)
        }
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Vec<InvalidField> {
        let mut errors = self.rates().err().unwrap_or_default();
        if self.is_on() && self.scan_interval < Duration::from_secs(1) {
            errors.push(InvalidField::new(
                "billing.scan_interval",
                "must be at least 1s",
            ));
        }
        for (i, d) in self.defaults.iter().enumerate() {
            let key = format!("billing.defaults[{i}]");
            if d.provider.is_none() && d.billing_account_id.is_none() {
                errors.push(InvalidField::new(
                    &key,
                    "sets neither provider nor billing_account_id",
                ));
            }
            if let Some(e) = d.prefix.strip_prefix('/') {
                errors.push(InvalidField::new(
                    &key,
                    format!(
                        "prefix `/{}`: paths in the bucket do not start with `/`",
                        clip(e)
                    ),
                ));
            }
        }
        errors
    }

    /// What the source needs of it.
    pub fn source(&self) -> SourceConfig {
        SourceConfig {
            defaults: self
                .defaults
                .iter()
                .map(|d| {
                    (
                        d.prefix.clone(),
                        Defaults {
                            provider: d.provider.clone(),
                            billing_account_id: d.billing_account_id.clone(),
                        },
                    )
                })
                .collect(),
            currencies: self.usd_rates.keys().cloned().collect(),
            ..SourceConfig::default()
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_exact_decimals_of_known_shape() {
        let mut config = BillingConfig::default();
        config.usd_rates.insert("EUR".into(), "1.0842".into());
        config.usd_rates.insert("JPY".into(), "6.6e-3".into());
        let rates = config.rates().unwrap();
        assert_eq!(rates["EUR"], 1_084_200_000_000);
        assert_eq!(rates["JPY"], 6_600_000_000);
        config.usd_rates.insert("eur".into(), "1".into());
        config.usd_rates.insert("GBP".into(), "0".into());
        config
            .usd_rates
            .insert("CHF".into(), "1.1234567890123".into());
        let keys: Vec<String> = config
            .validate()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(keys.iter().any(|k| k.contains("usd_rates.CHF")), "{keys:?}");
    }
}
