//! Points in time: milliseconds since the Unix epoch in storage, RFC 3339 (UTC) everywhere a
//! person or a JSON client sees them.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::RegistryError;

/// A UTC instant with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// From milliseconds since the epoch.
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This instant moved by `ms` milliseconds (saturating).
    pub fn add_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Parses RFC 3339 (`2026-12-01T10:00:00Z`, offsets allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Self, RegistryError> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
            RegistryError::invalid("time", format!("{s:?} is not an RFC 3339 time ({e})"))
        })?;
        let ms = dt.unix_timestamp_nanos() / 1_000_000;
        i64::try_from(ms)
            .map(Timestamp)
            .map_err(|_| RegistryError::invalid("time", format!("{s:?} is out of range")))
    }

    /// Parses what `kiln artifacts revoke --at` accepts: an RFC 3339 time, `now`, or a
    /// duration from `now` such as `30m`, `2h`, `+7d` (units s, m, h, d, w).
    pub fn parse_at(s: &str, now: Timestamp) -> Result<Self, RegistryError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("now") {
            return Ok(now);
        }
        let rel = t.strip_prefix('+').unwrap_or(t);
        if let Some(unit) = rel.chars().last().filter(|c| c.is_ascii_alphabetic()) {
            let digits = &rel[..rel.len() - 1];
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                let n: i64 = digits.parse().map_err(|_| {
                    RegistryError::invalid("time", format!("{s:?}: number too large"))
                })?;
                let unit_ms: i64 = match unit {
                    's' => 1_000,
                    'm' => 60_000,
                    'h' => 3_600_000,
                    'd' => 86_400_000,
                    'w' => 604_800_000,
                    _ => {
                        return Err(RegistryError::invalid(
                            "time",
                            format!("{s:?}: unknown unit {unit:?}; use s, m, h, d or w"),
                        ));
                    }
                };
                return Ok(now.add_millis(n.saturating_mul(unit_ms)));
            }
        }
        Self::parse_rfc3339(t).map_err(|_| {
            RegistryError::invalid(
                "time",
                format!("{s:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z), `now`, nor a duration like 2h"),
            )
        })
    }

    /// RFC 3339 in UTC with milliseconds, e.g. `2026-12-01T10:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(dt) => {
                let (y, mo, d) = (dt.year(), u8::from(dt.month()), dt.day());
                format!(
                    "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                    dt.hour(),
                    dt.minute(),
                    dt.second(),
                    dt.millisecond()
                )
            }
            Err(_) => format!("@{}ms", self.0),
        }
    }

    /// `2026-12-01 10:00` (UTC): short form for tables.
    pub fn short(self) -> String {
        let s = self.to_rfc3339();
        if s.len() >= 16 && !s.starts_with('@') {
            format!("{} {}", &s[..10], &s[11..16])
        } else {
            s
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Timestamp::parse_rfc3339("2026-12-01T10:20:30.456Z").expect("parse");
        assert_eq!(t.to_rfc3339(), "2026-12-01T10:20:30.456Z");
        assert_eq!(t.short(), "2026-12-01 10:20");
        let off = Timestamp::parse_rfc3339("2026-12-01T12:20:30.456+02:00").expect("parse");
        assert_eq!(off, t);
    }

    #[test]
    fn at_forms() {
        let now = Timestamp::from_millis(1_000_000);
        assert_eq!(Timestamp::parse_at("now", now).ok(), Some(now));
        assert_eq!(
            Timestamp::parse_at("2h", now).ok(),
            Some(now.add_millis(7_200_000))
        );
        assert_eq!(
            Timestamp::parse_at("+30m", now).ok(),
            Some(now.add_millis(1_800_000))
        );
        assert!(Timestamp::parse_at("2x", now).is_err());
        assert!(Timestamp::parse_at("tomorrow", now).is_err());
        assert!(Timestamp::parse_at("99999999999999999999h", now).is_err());
    }
}
