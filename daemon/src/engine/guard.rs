//! The statement guard: SQLite's authorizer and progress handler, bound to
//! one connection. It keeps transactions and connection settings the
//! daemon's own, and interrupts a statement at its deadline.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use super::db::epoch;

/// VM instructions between two looks at the request deadline.
const PROGRESS_OPS: i32 = 1000;

/// SQLite's authorizer and progress handler, bound to one connection.
///
/// While `client` is set, the authorizer refuses what would take the
/// daemon's transactions or connection settings away from it; the daemon's
/// own statements (BEGIN IMMEDIATE, SAVEPOINT...) run with it cleared. The
/// progress handler interrupts a statement once its deadline has passed.
#[derive(Clone)]
pub(crate) struct Guard {
    /// The `Scope` of the client code running now, or `DAEMON` (0) while
    /// the daemon's own statements run.
    scope: Arc<AtomicU8>,
    refusal: Arc<Mutex<Option<Refusal>>>,
    /// Set when the authorizer let client code use a savepoint: such a
    /// statement must not stay in the prepared-statement cache, where a
    /// request outside any transaction could reuse it unchecked (the
    /// authorizer runs only at prepare time).
    control_allowed: Arc<AtomicBool>,
    /// Nanoseconds since `epoch()`; 0 means no deadline.
    deadline: Arc<AtomicU64>,
}

/// Where a connection's progress handler shows that SQLite is working on
/// it: nanoseconds since `epoch()` of its last call. The writer's is its
/// heartbeat, so a long statement there reads as alive to the watchdog.
pub(crate) type Pulse = Arc<AtomicU64>;

/// Shows on `pulse` that its owner is alive now; returns now, in
/// nanoseconds since `epoch()` (never 0, which means "no beat").
pub(crate) fn beat(pulse: &AtomicU64) -> u64 {
    let now = epoch().elapsed().as_nanos().max(1) as u64;
    pulse.store(now, Ordering::Relaxed);
    now
}

/// What runs at each beat besides the pulse, given now (nanoseconds since
/// `epoch()`): the writer's sweep of its backlog. It must be cheap when it
/// has nothing to do, and never block.
pub(crate) type Tick = Arc<dyn Fn(u64) + Send + Sync>;

/// The writer's heartbeat: its pulse, kept wherever the writer shows it is
/// alive (its transaction loop, SQLite's progress handler, the vigil), and
/// the tick that goes with each beat.
#[derive(Clone)]
pub(crate) struct Heartbeat {
    pulse: Pulse,
    tick: Option<Tick>,
}

impl Heartbeat {
    pub(crate) fn new(pulse: Pulse, tick: Option<Tick>) -> Heartbeat {
        Heartbeat { pulse, tick }
    }

    /// Beats the pulse, then the tick; returns now (see [`beat`]).
    pub(crate) fn beat(&self) -> u64 {
        let now = beat(&self.pulse);
        if let Some(tick) = &self.tick {
            tick(now);
        }
        now
    }
}

/// Where client code runs, which decides what transaction control it may
/// use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A request of its own (the daemon's transaction and savepoint hold
    /// it): no transaction control at all.
    Request = 1,
    /// An interactive transaction on the writer or a read-only snapshot:
    /// SAVEPOINT, RELEASE and ROLLBACK TO work; BEGIN, COMMIT, ROLLBACK do
    /// not (the transaction API ends it).
    Transaction = 2,
    /// A deferred transaction still reading from its snapshot: a savepoint
    /// is a sign it will write, so the statement goes to the writer.
    Snapshot = 3,
}

const DAEMON: u8 = 0;

/// Why the authorizer stopped a statement.
pub(crate) enum Refusal {
    /// Not allowed here; the message says why and what to do.
    Refused(String),
    /// Allowed, but only on the writer (a savepoint in a deferred
    /// transaction's snapshot).
    NeedsWriter,
}

impl Guard {
    /// Installs the authorizer and progress handler on `conn`. With
    /// `litestream` (Litestream mode), client changes to Litestream's
    /// bookkeeping tables are refused too. `durable_full`: the daemon
    /// promises `synchronous=full`, so a client asking for it already has
    /// it (`already_so`). `pulse`, if given, is kept current while SQLite
    /// runs a statement here, the daemon's own included.
    pub(super) fn install(
        conn: &mut Connection,
        litestream: bool,
        durable_full: bool,
        heartbeat: Option<Heartbeat>,
    ) -> anyhow::Result<Guard> {
        let guard = Guard {
            scope: Arc::new(AtomicU8::new(DAEMON)),
            refusal: Arc::new(Mutex::new(None)),
            control_allowed: Arc::new(AtomicBool::new(false)),
            deadline: Arc::new(AtomicU64::new(0)),
        };
        let g = guard.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let scope = match g.scope.load(Ordering::Relaxed) {
                DAEMON => return Authorization::Allow,
                1 => Scope::Request,
                2 => Scope::Transaction,
                _ => Scope::Snapshot,
            };
            if let AuthAction::Pragma {
                pragma_name,
                pragma_value: Some(value),
            } = ctx.action
                && let Some(already) = already_so(pragma_name, value, durable_full)
            {
                return already;
            }
            let why = match litestream_table(&ctx.action) {
                Some(table) if litestream => Some(Refusal::Refused(format!(
                    "changing {table} is refused: it is Litestream's (Litestream mode), and \
                     Litestream needs it as it left it to replicate this database. Reading it \
                     is fine; to drop it for good, run nexusd without --litestream and stop \
                     Litestream first"
                ))),
                _ => refusal(&ctx, scope),
            };
            match why {
                None => {
                    if matches!(ctx.action, AuthAction::Savepoint { .. }) {
                        g.control_allowed.store(true, Ordering::Relaxed);
                    }
                    Authorization::Allow
                }
                Some(why) => {
                    if let Ok(mut slot) = g.refusal.lock() {
                        *slot = Some(why);
                    }
                    Authorization::Deny
                }
            }
        }))?;
        let g = guard.clone();
        conn.progress_handler(
            PROGRESS_OPS,
            Some(move || {
                let deadline = g.deadline.load(Ordering::Relaxed);
                if let Some(heartbeat) = &heartbeat {
                    let now = heartbeat.beat();
                    return deadline != 0 && now > deadline;
                }
                deadline != 0 && epoch().elapsed().as_nanos() as u64 > deadline
            }),
        )?;
        Ok(guard)
    }

    /// Runs `f` as client code in `scope`: guarded, and interrupted at
    /// `deadline`.
    pub(crate) fn client<T>(&self, deadline: Instant, scope: Scope, f: impl FnOnce() -> T) -> T {
        let nanos = deadline
            .saturating_duration_since(epoch())
            .as_nanos()
            .max(1);
        self.deadline
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.scope.store(scope as u8, Ordering::Relaxed);
        self.control_allowed.store(false, Ordering::Relaxed);
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = None;
        }
        let out = f();
        self.scope.store(DAEMON, Ordering::Relaxed);
        self.deadline.store(0, Ordering::Relaxed);
        out
    }

    /// Whether the statement just prepared uses a savepoint (see
    /// `control_allowed`).
    pub(super) fn control_allowed(&self) -> bool {
        self.control_allowed.load(Ordering::Relaxed)
    }

    pub(super) fn take_refusal(&self) -> Option<Refusal> {
        self.refusal.lock().ok().and_then(|mut s| s.take())
    }
}

/// Pragmas that only read, or read the schema; they may take an argument
/// that selects what to read (a table name, a row limit).
const READING_PRAGMAS: &[&str] = &[
    "application_id",
    "collation_list",
    "compile_options",
    "data_version",
    "database_list",
    "foreign_key_check",
    "foreign_key_list",
    "freelist_count",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "module_list",
    "page_count",
    "pragma_list",
    "quick_check",
    "schema_version",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
];

/// Pragmas that change only the database file's content, not the
/// connection; they may be set, and go through the writer like any write.
const FILE_PRAGMAS: &[&str] = &["application_id", "user_version", "optimize"];

/// Why nexusd refuses this action in `scope`, or `None` to allow it.
fn refusal(ctx: &AuthContext<'_>, scope: Scope) -> Option<Refusal> {
    let refused = |why: String| Some(Refusal::Refused(why));
    match ctx.action {
        AuthAction::Savepoint { .. } if scope == Scope::Transaction => None,
        AuthAction::Savepoint { .. } if scope == Scope::Snapshot => Some(Refusal::NeedsWriter),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }
            if scope == Scope::Request =>
        {
            refused(
                "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) is refused \
                 outside a transaction: nexusd runs every request in a transaction of its own. \
                 Open an interactive transaction (Client::transaction() in Rust, BEGIN in \
                 `nexusd ctl shell`), or send statements that must apply together as one batch"
                    .into(),
            )
        }
        AuthAction::Transaction { .. } => refused(
            "BEGIN, COMMIT and ROLLBACK are refused inside an interactive transaction: it is \
             already open, and commit() or rollback() ends it; use SAVEPOINT, RELEASE and \
             ROLLBACK TO for a nested one"
                .into(),
        ),
        AuthAction::Attach { filename } => refused(format!(
            "ATTACH '{filename}' is refused: a nexusd daemon serves only its own database file"
        )),
        AuthAction::Detach { database_name } => refused(format!(
            "DETACH {database_name} is refused: a nexusd daemon serves only its own database file"
        )),
        // `CREATE TABLE temp.x` is authorized as an ordinary CREATE in
        // database "temp".
        AuthAction::CreateTable { table_name } if in_temp(ctx) => {
            refused(temp_refusal("TABLE", table_name))
        }
        AuthAction::CreateView { view_name } if in_temp(ctx) => {
            refused(temp_refusal("VIEW", view_name))
        }
        AuthAction::CreateTrigger { trigger_name, .. } if in_temp(ctx) => {
            refused(temp_refusal("TRIGGER", trigger_name))
        }
        AuthAction::CreateIndex { index_name, .. } if in_temp(ctx) => {
            refused(temp_refusal("INDEX", index_name))
        }
        AuthAction::CreateTempTable { table_name } => refused(temp_refusal("TABLE", table_name)),
        AuthAction::CreateTempView { view_name } => refused(temp_refusal("VIEW", view_name)),
        AuthAction::CreateTempTrigger { trigger_name, .. } => {
            refused(temp_refusal("TRIGGER", trigger_name))
        }
        AuthAction::CreateTempIndex { index_name, .. } => {
            refused(temp_refusal("INDEX", index_name))
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = FILE_PRAGMAS.contains(&name.as_str())
                || (READING_PRAGMAS.contains(&name.as_str())
                    && (pragma_value.is_none() || !is_setter(&name)))
                || pragma_value.is_none() && is_readable_setting(&name);
            if allowed {
                None
            } else if name == "synchronous" && pragma_value.is_some() {
                // Only FULL or EXTRA get here (already_so took the rest),
                // on a daemon that promises less.
                refused(format!(
                    "PRAGMA synchronous = {} is refused: this daemon runs with --synchronous \
                     normal, so a power loss can drop its last commits, and one client cannot \
                     change that for its own writes. Start the daemon with --synchronous full \
                     (the default) for durable commits",
                    pragma_value.unwrap_or_default()
                ))
            } else if name == "wal_checkpoint" {
                refused(format!(
                    "PRAGMA wal_checkpoint{} is refused: the daemon checkpoints the WAL itself, \
                     once it passes --checkpoint-wal-bytes, and keeps the file near that size. \
                     Drop the line; to checkpoint now, an operator can run `nexusd ctl \
                     checkpoint` (`nexusd ctl checkpoint truncate` also empties the WAL)",
                    pragma_value.map_or(String::new(), |v| format!("({v})"))
                ))
            } else {
                let shown = match pragma_value {
                    Some(v) => format!("PRAGMA {pragma_name} = {v}"),
                    None => format!("PRAGMA {pragma_name}"),
                };
                refused(format!(
                    "{shown} is refused: nexusd owns journal mode, locking, synchronous and the \
                     other connection settings; read-only pragmas such as table_info and \
                     integrity_check are allowed"
                ))
            }
        }
        _ => None,
    }
}

/// The table an action changes, if it is one of Litestream's
/// (`_litestream_seq`, `_litestream_lock`).
fn litestream_table<'a>(action: &AuthAction<'a>) -> Option<&'a str> {
    let table = match *action {
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. } => table_name,
        _ => return None,
    };
    table
        .get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("_litestream_"))
        .then_some(table)
}

fn in_temp(ctx: &AuthContext<'_>) -> bool {
    ctx.database_name
        .is_some_and(|db| db.eq_ignore_ascii_case("temp"))
}

/// Why a TEMP object is refused: the connection it would live on is shared.
fn temp_refusal(kind: &str, name: &str) -> String {
    format!(
        "CREATE TEMP {kind} {name} is refused: every client shares the daemon's connections, so a \
         temporary object would be seen by, and act on, every other client's statements, and \
         vanish at the daemon's restart. Create an ordinary {kind} (and drop it when done), or \
         use a WITH clause for a scratch result"
    )
}

/// How to treat a pragma that sets what the daemon already guarantees, so
/// that a program moving from `sqlite3` can keep its start-up lines
/// (`PRAGMA journal_mode=WAL`, `foreign_keys=ON`, `busy_timeout=N`,
/// `synchronous=NORMAL`, `cache_size=N`): `Allow` where running it changes
/// nothing and answers what SQLite would (journal mode WAL, foreign keys
/// on), `Ignore` (no effect, no rows) where running it would change the
/// daemon's own connection but the client already has what it asks for
/// (a busy timeout, since no client ever waits on a lock, a synchronous
/// level at most the daemon's, which is FULL when `durable_full`, and the
/// `TUNING_PRAGMAS`, which change no answer). `None`: not one of these.
fn already_so(name: &str, value: &str, durable_full: bool) -> Option<Authorization> {
    let value = value.trim_matches(|c| c == '\'' || c == '"');
    let is = |v: &str| value.eq_ignore_ascii_case(v);
    match name.to_ascii_lowercase().as_str() {
        "journal_mode" if is("wal") => Some(Authorization::Allow),
        "foreign_keys" if is("on") || is("1") || is("true") || is("yes") => {
            Some(Authorization::Allow)
        }
        "busy_timeout" if value.parse::<i64>().is_ok() => Some(Authorization::Ignore),
        "synchronous" if is("off") || is("0") || is("normal") || is("1") => {
            Some(Authorization::Ignore)
        }
        "synchronous" if (is("full") || is("2") || is("extra") || is("3")) && durable_full => {
            Some(Authorization::Ignore)
        }
        tuning if TUNING_PRAGMAS.contains(&tuning) => Some(Authorization::Ignore),
        _ => None,
    }
}

/// Pragmas that tune a connection's memory, disk use or query planning and
/// change no answer: the "performance" lines many programs run after
/// `sqlite3.connect()`. Setting one is ignored (no effect, no rows): the
/// daemon's connections are shared and tuned by the daemon, and the
/// client's statements give the same answers either way.
const TUNING_PRAGMAS: &[&str] = &[
    "analysis_limit",
    "automatic_index",
    "cache_size",
    "cache_spill",
    "hard_heap_limit",
    "journal_size_limit",
    "mmap_size",
    "soft_heap_limit",
    "temp_store",
    "threads",
    "wal_autocheckpoint",
];

/// Reading pragmas whose argument would instead set something.
fn is_setter(name: &str) -> bool {
    matches!(name, "schema_version")
}

/// Connection settings that may be read (no argument) but not set.
fn is_readable_setting(name: &str) -> bool {
    matches!(
        name,
        "journal_mode"
            | "synchronous"
            | "foreign_keys"
            | "encoding"
            | "page_size"
            | "auto_vacuum"
            | "cache_size"
            | "busy_timeout"
            | "locking_mode"
            | "wal_autocheckpoint"
            | "max_page_count"
            | "temp_store"
            | "secure_delete"
            | "recursive_triggers"
            | "query_only"
            | "journal_size_limit"
            | "mmap_size"
    )
}
