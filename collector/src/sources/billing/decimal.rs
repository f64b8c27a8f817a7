//! Money as exact decimals: `Decimal128(38, 12)`, an `i128` of millionths of a millionth.
//! Parsed from text digit by digit (plain or E-notation), never through `f64`; a value that
//! needs more than 12 decimals, or more than 38 digits, is refused rather than rounded. Sums
//! are checked: an overflow is an error, never a wrapped total.

use std::fmt;

/// Decimal places kept.
pub const SCALE: u32 = 12;
/// Digits a `Decimal128(38, _)` holds.
pub const PRECISION: u8 = 38;
/// `10^SCALE`.
pub const ONE: i128 = 1_000_000_000_000;
/// The largest magnitude `Decimal128(38, 12)` holds, plus one unit: `10^38`.
const LIMIT: i128 = 100_000_000_000_000_000_000_000_000_000_000_000_000;

/// Why a cell is not money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// Not a number at all.
    NotANumber,
    /// Non-zero digits past the 12th decimal.
    TooManyDecimals,
    /// More than 38 digits at scale 12.
    TooLarge,
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoneyError::NotANumber => "not a decimal number",
            MoneyError::TooManyDecimals => {
                "more than 12 decimal places (recmeter keeps money exact and does not round)"
            }
            MoneyError::TooLarge => "too large for DECIMAL(38,12)",
        })
    }
}

/// Parses `text` (`-12.5`, `0.00000080000`, `1.5E-7`, `+3e2`) into units of `10^-12`.
pub fn parse(text: &str) -> Result<i128, MoneyError> {
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => {
            let e = &rest[at + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(MoneyError::NotANumber);
            }
            let value: i32 = digits.parse().map_err(|_| MoneyError::NotANumber)?;
            (&rest[..at], if e.starts_with('-') { -value } else { value })
        }
        None => (rest, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(MoneyError::NotANumber);
    }
    // The digits, and the power of ten of the last: value = digits × 10^(exponent − decimals).
    let all: Vec<u8> = whole.bytes().chain(fraction.bytes()).collect();
    let decimals = i32::try_from(fraction.len()).map_err(|_| MoneyError::TooLarge)?;
    // In units of 10^-12: value = digits × 10^shift.
    let shift = i32::try_from(SCALE).unwrap_or(12) + exponent - decimals;
    // Digits below 10^-12 must be zeros; they are dropped.
    let kept = if shift >= 0 {
        all.len()
    } else {
        let cut = usize::try_from(-shift).unwrap_or(usize::MAX).min(all.len());
        if all[all.len() - cut..].iter().any(|&d| d != b'0') {
            return Err(MoneyError::TooManyDecimals);
        }
        all.len() - cut
    };
    let mut value: i128 = 0;
    for &d in &all[..kept] {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(d - b'0')))
            .ok_or(MoneyError::TooLarge)?;
    }
    if shift > 0 {
        for _ in 0..shift {
            value = value.checked_mul(10).ok_or(MoneyError::TooLarge)?;
            if value >= LIMIT {
                return Err(MoneyError::TooLarge);
            }
        }
    }
    if value >= LIMIT {
        return Err(MoneyError::TooLarge);
    }
    Ok(if negative { -value } else { value })
}

/// `value` (units of `10^-12`) as text with all 12 decimals, as DuckDB prints a
/// `DECIMAL(38,12)`: `-0.500000000000`.
pub fn format(value: i128) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let magnitude = value.unsigned_abs();
    let one = ONE.unsigned_abs();
    format!("{sign}{}.{:012}", magnitude / one, magnitude % one)
}

/// A checked running total: an overflow of `DECIMAL(38,12)` is an error, never a wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Total(pub i128);

impl Total {
    /// Adds `value`; `Err` once the sum leaves `DECIMAL(38,12)`.
    pub fn add(&mut self, value: i128) -> Result<(), MoneyError> {
        let sum = self.0.checked_add(value).ok_or(MoneyError::TooLarge)?;
        if sum.unsigned_abs() >= LIMIT.unsigned_abs() {
            return Err(MoneyError::TooLarge);
        }
        self.0 = sum;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_e_notation_parse_exactly() {
        for (text, units) in [
            ("0", 0),
            ("0.00000080000", 800_000),
            ("-12.5", -12_500_000_000_000),
            ("+3e2", 300 * ONE),
            ("1.5E-7", 150_000),
            ("2.000000000000000", 2 * ONE),
            ("1e-12", 1),
            (".5", ONE / 2),
            ("5.", 5 * ONE),
            (" 7 ", 7 * ONE),
            ("0.000000000001000", 1),
        ] {
            assert_eq!(parse(text), Ok(units), "{text}");
        }
        assert_eq!(format(-ONE / 2), "-0.500000000000");
        assert_eq!(format(800_000), "0.000000800000");
        assert_eq!(format(123 * ONE + 1), "123.000000000001");
    }

    #[test]
    fn what_is_not_exact_money_is_refused() {
        for (text, error) in [
            ("", MoneyError::NotANumber),
            ("abc", MoneyError::NotANumber),
            ("1.2.3", MoneyError::NotANumber),
            ("1e", MoneyError::NotANumber),
            ("--1", MoneyError::NotANumber),
            ("NaN", MoneyError::NotANumber),
            ("1,5", MoneyError::NotANumber),
            ("0.0000000000001", MoneyError::TooManyDecimals),
            ("1e-13", MoneyError::TooManyDecimals),
            ("1e26", MoneyError::TooLarge),
            ("1e9999", MoneyError::TooLarge),
            (&"9".repeat(40), MoneyError::TooLarge),
        ] {
            assert_eq!(parse(text), Err(error), "{text}");
        }
        assert_eq!(
            parse("99999999999999999999999999.999999999999"),
            Ok(LIMIT - 1)
        );
        let mut total = Total::default();
        total.add(LIMIT - 1).unwrap();
        assert_eq!(total.add(1), Err(MoneyError::TooLarge));
        assert_eq!(total.0, LIMIT - 1, "unchanged by the refused add");
    }
}
