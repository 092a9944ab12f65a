//! Time as sandgate reads and writes it: Unix milliseconds, and RFC 3339 text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
const LAST_MS: i64 = 253_402_300_799_999;

/// `ms` (Unix milliseconds) as RFC 3339 with milliseconds, in UTC. Times before 1970
/// are written as 1970 and times past the year 9999 as its last millisecond, since
/// the format cannot hold them: it never fails, whatever an operator's TTL adds up to.
pub fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, LAST_MS) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// `ms` as RFC 3339 to the second, in UTC; a time the format cannot hold (before
/// 1970, past the year 9999) is written as its number, so a reader sees it is odd.
pub fn rfc3339_seconds(ms: i64) -> String {
    if !(0..=LAST_MS).contains(&ms) {
        return ms.to_string();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_holds_every_millisecond_it_is_given() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert!(now_ms() > 1_700_000_000_000);
        assert_eq!(rfc3339_seconds(LAST_MS), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_seconds(i64::MAX), i64::MAX.to_string());
    }
}
