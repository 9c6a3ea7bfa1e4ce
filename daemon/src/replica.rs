//! The Litestream replica, as nexusd sees it in Litestream mode: a task
//! asks Litestream's control socket once a second whether it replicates
//! this database and when it last synced, and keeps the answer for
//! `ctl status` and the metrics.
//!
//! Litestream's control socket speaks HTTP/1.1 with JSON (`GET /list`). A
//! request here is one HTTP/1.0 exchange on a fresh connection, so the
//! answer ends where the stream does; nothing but `/list` is asked, and it
//! changes nothing on Litestream's side.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the control socket is asked.
const POLL: Duration = Duration::from_secs(1);
/// How long one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(500);
/// The most of an answer read; `/list` is a few hundred bytes per database.
const MAX_ANSWER: u64 = 1024 * 1024;

/// What the last look at Litestream found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Replica {
    /// Litestream mode without `litestream-socket`: nothing to ask.
    NotWatched,
    /// Not asked yet.
    Unknown,
    /// The control socket did not answer, or not sensibly.
    Unreachable(String),
    /// Litestream answered, but does not list this database.
    NotListed,
    /// Litestream lists this database.
    Listed {
        /// Litestream's word: "replicating", "open" or "stopped".
        status: String,
        /// Time since its last successful sync of the WAL, if it has synced.
        last_sync_age: Option<Duration>,
    },
}

impl Replica {
    /// Whether Litestream is replicating this database.
    pub(crate) fn attached(&self) -> bool {
        matches!(self, Replica::Listed { status, .. } if status == "replicating")
    }

    pub(crate) fn last_sync_age(&self) -> Option<Duration> {
        match self {
            Replica::Listed { last_sync_age, .. } => *last_sync_age,
            _ => None,
        }
    }

    /// One line for `ctl status`.
    pub(crate) fn describe(&self, socket: Option<&Path>) -> String {
        let at = socket.map_or_else(String::new, |s| {
            format!(" (control socket {})", s.display())
        });
        match self {
            Replica::NotWatched => "litestream mode; replica state unknown: set \
                                    litestream-socket to Litestream's control socket to see it"
                .to_owned(),
            Replica::Unknown => format!("litestream mode; not asked yet{at}"),
            Replica::Unreachable(why) => format!(
                "litestream mode; Litestream is NOT reachable{at}: {why}. Is `litestream \
                 replicate` running, with `socket: enabled: true`?"
            ),
            Replica::NotListed => format!(
                "litestream mode; Litestream is running{at} but does NOT replicate this \
                 database: add its path to Litestream's config"
            ),
            Replica::Listed {
                status,
                last_sync_age,
            } => match last_sync_age {
                Some(age) => format!(
                    "litestream {status}, last sync {:.1} s ago{at}",
                    age.as_secs_f64()
                ),
                None => format!("litestream {status}, not synced yet{at}"),
            },
        }
    }
}

/// The latest look, shared between the watching task and its readers.
#[derive(Debug)]
pub(crate) struct ReplicaWatch {
    socket: Option<PathBuf>,
    state: Mutex<Replica>,
}

impl ReplicaWatch {
    pub(crate) fn new(socket: Option<PathBuf>) -> ReplicaWatch {
        let state = if socket.is_some() {
            Replica::Unknown
        } else {
            Replica::NotWatched
        };
        ReplicaWatch {
            socket,
            state: Mutex::new(state),
        }
    }

    pub(crate) fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    pub(crate) fn get(&self) -> Replica {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, replica: Replica) {
        match self.state.lock() {
            Ok(mut s) => *s = replica,
            Err(poisoned) => *poisoned.into_inner() = replica,
        }
    }
}

/// Asks Litestream once a second until shutdown; logs when the replica
/// comes or goes.
pub(crate) async fn watch(
    watch: Arc<ReplicaWatch>,
    db: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(socket) = watch.socket.clone() else {
        return;
    };
    let db = canonical(&db);
    let mut ticker = tokio::time::interval(POLL);
    let mut was_attached = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let replica = look(&socket, &db).await;
        let attached = replica.attached();
        if was_attached != Some(attached) {
            if attached {
                tracing::info!(replica = %replica.describe(Some(&socket)), "Litestream replicates the database");
            } else {
                tracing::warn!(replica = %replica.describe(Some(&socket)), "Litestream does not replicate the database");
            }
            was_attached = Some(attached);
        }
        watch.set(replica);
    }
}

async fn look(socket: &Path, db: &Path) -> Replica {
    match tokio::time::timeout(EXCHANGE_TIMEOUT, get(socket, "/list")).await {
        Err(_) => Replica::Unreachable(format!(
            "no answer within {} ms",
            EXCHANGE_TIMEOUT.as_millis()
        )),
        Ok(Err(e)) => Replica::Unreachable(e),
        Ok(Ok(body)) => match parse_list(&body, db, SystemTime::now()) {
            Ok(r) => r,
            Err(e) => Replica::Unreachable(e),
        },
    }
}

/// One `GET` over the Unix socket; the body of a 200 answer.
async fn get(socket: &Path, path: &str) -> Result<Vec<u8>, String> {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("could not connect to {}: {e}", socket.display()))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: litestream\r\nAccept: application/json\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("could not ask {}: {e}", socket.display()))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("could not read the answer: {e}"))?;
    split_http(&answer)
}

/// The body of an HTTP/1.x answer, if its status is 200.
fn split_http(answer: &[u8]) -> Result<Vec<u8>, String> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "the answer is not HTTP (no end of headers)".to_owned())?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("Litestream answered {status_line:?}"));
    }
    Ok(answer[end + 4..].to_vec())
}

#[derive(Deserialize)]
struct ListAnswer {
    databases: Vec<ListedDb>,
}

#[derive(Deserialize)]
struct ListedDb {
    path: String,
    status: String,
    last_sync_at: Option<String>,
}

fn parse_list(body: &[u8], db: &Path, now: SystemTime) -> Result<Replica, String> {
    let list: ListAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("Litestream's /list answer did not parse: {e}"))?;
    let Some(entry) = list
        .databases
        .into_iter()
        .find(|d| canonical(Path::new(&d.path)) == db)
    else {
        return Ok(Replica::NotListed);
    };
    let last_sync_age = match entry.last_sync_at.as_deref() {
        None => None,
        Some(t) => {
            let at = parse_rfc3339(t)
                .ok_or_else(|| format!("Litestream's last_sync_at {t:?} is not a time"))?;
            Some(now.duration_since(at).unwrap_or(Duration::ZERO))
        }
    };
    Ok(Replica::Listed {
        status: entry.status,
        last_sync_age,
    })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Parses the RFC 3339 times Go writes: `2026-11-24T03:10:00.123456789Z`
/// or with an offset, `+01:00`.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let n: u32 = frac[..digits].parse().ok()?;
        nanos = n * 10u32.pow(9 - digits as u32);
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_as_go_writes_them() {
        let t = parse_rfc3339("1970-01-02T00:00:01Z").expect("parses");
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(86_401));
        let t = parse_rfc3339("2026-11-24T03:10:00.5+01:00").expect("parses");
        let want = parse_rfc3339("2026-11-24T02:10:00.5Z").expect("parses");
        assert_eq!(t, want);
        // 2000-03-01 is day 11017 (a leap year's February was skipped right).
        let t = parse_rfc3339("2000-03-01T00:00:00.123456789Z").expect("parses");
        assert_eq!(t, UNIX_EPOCH + Duration::new(11_017 * 86_400, 123_456_789));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-24T03:10:00",
            "2026-11-24T03:10:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_answers_say_whether_this_database_is_replicated() {
        let now = parse_rfc3339("2026-11-24T03:10:02Z").expect("parses");
        let db = Path::new("/nonexistent/app.db");
        let body = br#"{"databases":[
            {"path":"/nonexistent/other.db","status":"replicating"},
            {"path":"/nonexistent/app.db","status":"replicating","last_sync_at":"2026-11-24T03:10:00.5Z"}]}"#;
        let r = parse_list(body, db, now).expect("parses");
        assert!(r.attached());
        assert_eq!(r.last_sync_age(), Some(Duration::from_millis(1500)));
        let r = parse_list(br#"{"databases":[]}"#, db, now).expect("parses");
        assert_eq!(r, Replica::NotListed);
        assert!(!r.attached());
        assert!(parse_list(b"not json", db, now).is_err());
    }

    #[test]
    fn only_a_200_answer_has_a_body() {
        assert_eq!(
            split_http(b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\n{}").expect("200"),
            b"{}"
        );
        assert!(split_http(b"HTTP/1.0 404 Not Found\r\n\r\n{}").is_err());
        assert!(split_http(b"garbage").is_err());
    }
}
