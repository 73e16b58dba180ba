//! Durations in config: `"500ms"`, `"30s"`, `"5m"`, `"24h"`, `"7d"`.

use crate::model::BadValue;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

pub fn parse(s: &str) -> Result<std::time::Duration, BadValue> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, e.g. \"30s\"")
    })?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("invalid duration {s:?}: unit must be ms, s, m, h or d").into()),
    };
    // Timers add durations to the clock; an absurd one would overflow it and panic a task.
    const MAX_DAYS: u64 = 3650;
    match n.checked_mul(ms) {
        Some(total) if total <= MAX_DAYS * 86_400_000 => {
            Ok(std::time::Duration::from_millis(total))
        }
        _ => Err(
            format!("duration {s:?} is longer than {MAX_DAYS}d (ten years); is it a typo?").into(),
        ),
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = super::EnvString::deserialize(d)?;
        parse(s.as_str())
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration as D;

    #[test]
    fn units() {
        assert_eq!(parse("500ms").unwrap(), D::from_millis(500));
        assert_eq!(parse("24h").unwrap(), D::from_secs(86_400));
        assert_eq!(parse("7d").unwrap(), D::from_secs(7 * 86_400));
        assert_eq!(parse("3650d").unwrap(), D::from_secs(3650 * 86_400));
        assert!(parse("3651d").unwrap_err().contains("ten years"));
        assert!(parse("18446744073709551615d")
            .unwrap_err()
            .contains("ten years"));
        assert_eq!(parse("0s").unwrap(), D::ZERO);
        assert!(parse("5 minutes").unwrap_err().contains("unit"));
        assert!(parse("h").unwrap_err().contains("number"));
    }
}
