//! Retention policies with restic's vocabulary: which snapshots to keep,
//! and why each kept one is kept. Pure: no store, no key.
//!
//! Snapshots are looked at newest first. `last N` keeps the N newest;
//! `hourly N` (`daily`, `weekly`, `monthly`, `yearly`) keeps the newest
//! snapshot of each of the N most recent hours (days, ISO weeks, months,
//! years) that have one; `within D` keeps every snapshot made less than D
//! before the newest one; named snapshots are kept. Calendar periods are
//! UTC. The newest snapshot is always kept.

use serde::Serialize;
use time::OffsetDateTime;

/// What to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The N newest snapshots.
    pub last: Option<u32>,
    /// The newest of each of the last N hours that have snapshots.
    pub hourly: Option<u32>,
    /// ... days.
    pub daily: Option<u32>,
    /// ... ISO weeks.
    pub weekly: Option<u32>,
    /// ... months.
    pub monthly: Option<u32>,
    /// ... years.
    pub yearly: Option<u32>,
    /// Every snapshot made less than this many seconds before the newest.
    pub within: Option<KeepWithin>,
    /// Snapshots named by id (8 or more hex characters of it) or sequence.
    pub snapshots: Vec<String>,
}

/// A `--keep-within` span, as given (`2y6m`, `7d`, `36h`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepWithin {
    /// The text given.
    pub text: String,
    /// Seconds: a year counts 365 days, a month 30.
    pub seconds: i64,
}

impl std::str::FromStr for KeepWithin {
    type Err = String;

    /// Parses restic's form: numbers followed by `y`, `m`, `d` or `h`
    /// (years, months, days, hours), such as `1y6m` or `36h`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a span like 7d, 36h or 1y6m (y, m, d, h)");
        let mut seconds: i64 = 0;
        let mut number = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let n: i64 = number.parse().map_err(|_| bad())?;
            number.clear();
            let unit = match c {
                'y' => 365 * 86_400,
                'm' => 30 * 86_400,
                'd' => 86_400,
                'h' => 3_600,
                _ => return Err(bad()),
            };
            seconds = n
                .checked_mul(unit)
                .and_then(|v| seconds.checked_add(v))
                .ok_or_else(bad)?;
        }
        if !number.is_empty() || seconds == 0 {
            return Err(bad());
        }
        Ok(KeepWithin {
            text: s.to_owned(),
            seconds,
        })
    }
}

impl KeepPolicy {
    /// Whether the policy keeps anything beyond the newest snapshot (a
    /// policy that asks for nothing is refused: it would forget everything
    /// else).
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
            && self.yearly.is_none()
            && self.within.is_none()
            && self.snapshots.is_empty()
    }

    /// The policy as words, for the retention record and reports.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, n) in [
            ("keep-last", self.last),
            ("keep-hourly", self.hourly),
            ("keep-daily", self.daily),
            ("keep-weekly", self.weekly),
            ("keep-monthly", self.monthly),
            ("keep-yearly", self.yearly),
        ] {
            if let Some(n) = n {
                parts.push(format!("--{name} {n}"));
            }
        }
        if let Some(w) = &self.within {
            parts.push(format!("--keep-within {}", w.text));
        }
        for s in &self.snapshots {
            parts.push(format!("--keep-snapshot {s}"));
        }
        parts.join(" ")
    }
}

/// One snapshot the policy looks at.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Its sequence number.
    pub sequence: u64,
    /// Its id (32 hex characters).
    pub id: String,
    /// When it was made, seconds since the Unix epoch.
    pub created_unix: i64,
}

/// What the policy decided for one snapshot.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot's sequence number.
    pub sequence: u64,
    /// Its id.
    pub id: String,
    /// When it was made, seconds since the Unix epoch.
    pub created_unix: i64,
    /// Whether it is kept.
    pub keep: bool,
    /// Why it is kept (empty when forgotten).
    pub reasons: Vec<String>,
}

/// One calendar rule: how many periods are left, and the last period kept.
struct Bucket {
    name: &'static str,
    left: u32,
    last: Option<i64>,
    period: fn(OffsetDateTime) -> i64,
}

fn hour(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(3_600)
}
fn day(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(86_400)
}
fn week(t: OffsetDateTime) -> i64 {
    let (year, week, _) = t.to_iso_week_date();
    i64::from(year) * 100 + i64::from(week)
}
fn month(t: OffsetDateTime) -> i64 {
    i64::from(t.year()) * 100 + i64::from(u8::from(t.month()))
}
fn year(t: OffsetDateTime) -> i64 {
    i64::from(t.year())
}

/// Whether `selector` (an id, an id prefix of 8+ characters, or a sequence
/// number) names `c`.
fn names(selector: &str, c: &Candidate) -> bool {
    c.sequence.to_string() == selector || (selector.len() >= 8 && c.id.starts_with(selector))
}

/// Applies `policy` to the snapshots of one writer: a decision for each,
/// newest first. The newest is always kept.
pub fn apply(policy: &KeepPolicy, snapshots: &[Candidate]) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = snapshots.iter().collect();
    sorted.sort_by_key(|c| std::cmp::Reverse((c.sequence, c.created_unix)));
    let mut buckets: Vec<Bucket> = [
        ("hourly", policy.hourly, hour as fn(OffsetDateTime) -> i64),
        ("daily", policy.daily, day),
        ("weekly", policy.weekly, week),
        ("monthly", policy.monthly, month),
        ("yearly", policy.yearly, year),
    ]
    .into_iter()
    .filter_map(|(name, n, period)| {
        n.map(|left| Bucket {
            name,
            left,
            last: None,
            period,
        })
    })
    .collect();
    let mut last_left = policy.last.unwrap_or(0);
    let newest_time = sorted.first().map_or(0, |c| c.created_unix);
    let mut out = Vec::with_capacity(sorted.len());
    for (i, c) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if i == 0 {
            reasons.push("newest snapshot (never forgotten)".to_owned());
        }
        if last_left > 0 {
            last_left -= 1;
            reasons.push("last snapshot".to_owned());
        }
        let t = OffsetDateTime::from_unix_timestamp(c.created_unix)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        for b in &mut buckets {
            let p = (b.period)(t);
            if b.left > 0 && b.last != Some(p) {
                b.left -= 1;
                b.last = Some(p);
                reasons.push(format!("{} snapshot", b.name));
            }
        }
        if let Some(w) = &policy.within
            && c.created_unix > newest_time.saturating_sub(w.seconds)
        {
            reasons.push(format!("within {} of the newest", w.text));
        }
        if policy.snapshots.iter().any(|s| names(s, c)) {
            reasons.push("named with --keep-snapshot".to_owned());
        }
        out.push(Decision {
            sequence: c.sequence,
            id: c.id.clone(),
            created_unix: c.created_unix,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600;
    const DAY: i64 = 86_400;
    /// Monday 2024-01-01 00:00 UTC.
    const T0: i64 = 1_704_067_200;

    fn snaps(times: &[i64]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| Candidate {
                sequence: i as u64 + 1,
                id: format!("{:08x}{:024x}", i + 0xabc0_0000, 0),
                created_unix: t,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<u64> {
        let mut v: Vec<u64> = d.iter().filter(|d| d.keep).map(|d| d.sequence).collect();
        v.sort();
        v
    }

    #[test]
    fn keep_last_and_the_newest() {
        let s = snaps(&(0..10).map(|i| T0 + i * HOUR).collect::<Vec<_>>());
        let p = KeepPolicy {
            last: Some(3),
            ..KeepPolicy::default()
        };
        let d = apply(&p, &s);
        assert_eq!(kept(&d), vec![8, 9, 10]);
        assert!(d[0].reasons.iter().any(|r| r.contains("newest")));
        assert!(d.iter().filter(|d| !d.keep).all(|d| d.reasons.is_empty()));
        // Even keep-last 0 keeps the newest.
        let p = KeepPolicy {
            last: Some(0),
            ..KeepPolicy::default()
        };
        assert_eq!(kept(&apply(&p, &s)), vec![10]);
    }

    #[test]
    fn calendar_buckets_keep_the_newest_of_each_period() {
        // Three snapshots a day for five days.
        let times: Vec<i64> = (0..5)
            .flat_map(|d| [1, 9, 17].map(|h| T0 + d * DAY + h * HOUR))
            .collect();
        let s = snaps(&times);
        let p = KeepPolicy {
            daily: Some(3),
            ..KeepPolicy::default()
        };
        // The last of days 5, 4 and 3.
        assert_eq!(kept(&apply(&p, &s)), vec![9, 12, 15]);
        let p = KeepPolicy {
            hourly: Some(2),
            weekly: Some(1),
            ..KeepPolicy::default()
        };
        assert_eq!(kept(&apply(&p, &s)), vec![14, 15]);
        let p = KeepPolicy {
            monthly: Some(5),
            yearly: Some(5),
            ..KeepPolicy::default()
        };
        assert_eq!(kept(&apply(&p, &s)), vec![15]);
    }

    #[test]
    fn within_and_named() {
        let s = snaps(&(0..6).map(|i| T0 + i * DAY).collect::<Vec<_>>());
        let p = KeepPolicy {
            within: Some("2d".parse().unwrap()),
            snapshots: vec!["1".into(), "abc00002".into()],
            ..KeepPolicy::default()
        };
        let d = apply(&p, &s);
        // Within 2 days of the newest (day 5): days 4 and 5 (day 3 is
        // exactly 2 days before); sequence 1 by number, sequence 3 by id.
        assert_eq!(kept(&d), vec![1, 3, 5, 6]);
        assert!(!p.is_empty());
        assert!(KeepPolicy::default().is_empty());
        assert!(p.describe().contains("--keep-within 2d"));
    }

    #[test]
    fn spans_parse_like_restic() {
        assert_eq!("7d".parse::<KeepWithin>().unwrap().seconds, 7 * DAY);
        assert_eq!(
            "1y6m36h".parse::<KeepWithin>().unwrap().seconds,
            365 * DAY + 180 * DAY + 36 * HOUR
        );
        for bad in ["", "7", "d", "7x", "0d", "-1d", "99999999999999999999y"] {
            assert!(bad.parse::<KeepWithin>().is_err(), "{bad}");
        }
    }
}
