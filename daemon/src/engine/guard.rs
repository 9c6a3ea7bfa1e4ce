//! The statement guard: SQLite's authorizer and progress handler, bound to
//! one connection. It keeps transactions and connection settings the
//! daemon's own, and interrupts a statement at its deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    client: Arc<AtomicBool>,
    refusal: Arc<Mutex<Option<String>>>,
    /// Nanoseconds since `epoch()`; 0 means no deadline.
    deadline: Arc<AtomicU64>,
}

impl Guard {
    /// Installs the authorizer and progress handler on `conn`.
    pub(super) fn install(conn: &mut Connection) -> anyhow::Result<Guard> {
        let guard = Guard {
            client: Arc::new(AtomicBool::new(false)),
            refusal: Arc::new(Mutex::new(None)),
            deadline: Arc::new(AtomicU64::new(0)),
        };
        let g = guard.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if !g.client.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            match refusal(&ctx) {
                None => Authorization::Allow,
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
                deadline != 0 && epoch().elapsed().as_nanos() as u64 > deadline
            }),
        )?;
        Ok(guard)
    }

    /// Runs `f` as client code: guarded, and interrupted at `deadline`.
    pub(crate) fn client<T>(&self, deadline: Instant, f: impl FnOnce() -> T) -> T {
        let nanos = deadline
            .saturating_duration_since(epoch())
            .as_nanos()
            .max(1);
        self.deadline
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.client.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = None;
        }
        let out = f();
        self.client.store(false, Ordering::Relaxed);
        self.deadline.store(0, Ordering::Relaxed);
        out
    }

    pub(super) fn take_refusal(&self) -> Option<String> {
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

/// Why nexusd refuses this action, or `None` to allow it.
fn refusal(ctx: &AuthContext<'_>) -> Option<String> {
    match ctx.action {
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Some(
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) is refused: \
             nexusd runs every request in a transaction of its own; send statements that must \
             apply together as one batch"
                .into(),
        ),
        AuthAction::Attach { filename } => Some(format!(
            "ATTACH '{filename}' is refused: a nexusd daemon serves only its own database file"
        )),
        AuthAction::Detach { database_name } => Some(format!(
            "DETACH {database_name} is refused: a nexusd daemon serves only its own database file"
        )),
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
            } else {
                let shown = match pragma_value {
                    Some(v) => format!("PRAGMA {pragma_name} = {v}"),
                    None => format!("PRAGMA {pragma_name}"),
                };
                Some(format!(
                    "{shown} is refused: nexusd owns journal mode, locking, synchronous and the \
                     other connection settings; read-only pragmas such as table_info and \
                     integrity_check are allowed"
                ))
            }
        }
        _ => None,
    }
}

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
