//! `nexusd ctl shell`: an interactive SQL shell over the client crate,
//! with line editing (rustyline), history, and sqlite3-style dot-commands.

use std::path::{Path, PathBuf};

use nexusd_client::{Client, Params, StatementResult, Transaction, Value};

use crate::ctl::{Failed, display, print_executed, print_status, print_table};

/// `nexusd ctl shell`: SQL in, aligned tables out. Statements end with `;`
/// and may span lines; dot-commands are one line. Fed from a pipe or a
/// file, as the sqlite3 shell is, it goes on past an error and exits
/// non-zero at the end if anything failed.
pub(crate) async fn run(client: &Client, socket: &Path) -> Result<(), Failed> {
    use rustyline::error::ReadlineError;
    use std::io::IsTerminal;

    let interactive = std::io::stdin().is_terminal();
    let mut failures = 0usize;

    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Failed(format!("could not start line editing: {e}")))?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".nexusd_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let status = client.status().await?;
    outln!(
        "nexusd {} (SQLite {}) at {}\nEnd statements with ';'. .help for commands, .quit to leave.",
        status.server_version,
        status.sqlite_version,
        socket.display()
    );
    let mut pending = String::new();
    // An open transaction, as psql shows it: `nexusd*>`.
    let mut txn: Option<Transaction> = None;
    loop {
        let prompt = match (pending.is_empty(), txn.is_some()) {
            (true, false) => "nexusd> ",
            (true, true) => "nexusd*> ",
            (false, _) => "   ...> ",
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Failed(format!("reading input failed: {e}"))),
        };
        let trimmed = line.trim();
        if pending.is_empty() && trimmed.starts_with('.') {
            let _ = editor.add_history_entry(trimmed);
            match dot_command(client, trimmed).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(Failed(m)) => {
                    eprintln!("error: {m}");
                    failures += 1;
                }
            }
            continue;
        }
        // Blank lines and comments before a statement are skipped, as the
        // sqlite3 shell skips them, so a dot-command after them still works.
        if pending.is_empty() && nexusd::is_blank_sql(trimmed) {
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        // Complete as SQLite's own tokenizer sees it: a `;` inside a string
        // or a trigger's body does not end the input, and a comment after
        // the last `;` does not hold it open.
        if !is_complete(&pending) {
            continue;
        }
        let input = std::mem::take(&mut pending);
        let _ = editor.add_history_entry(input.trim());
        // Several statements on a line run one after the other, as in the
        // sqlite3 shell; the first error stops the rest.
        let statements = split_statements(&input);
        let count = statements.len();
        for (i, sql) in statements.into_iter().enumerate() {
            if let Err(Failed(m)) = run_sql(client, &mut txn, sql).await {
                eprintln!("error: {m}");
                failures += 1;
                if i + 1 < count {
                    eprintln!(
                        "({} later statement(s) on that input not run)",
                        count - i - 1
                    );
                }
                break;
            }
        }
    }
    if !nexusd::is_blank_sql(&pending) {
        eprintln!(
            "error: the input ended inside a statement, which was not run (end it with ';'): {}",
            pending.trim()
        );
        failures += 1;
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    if failures > 0 && !interactive {
        return Err(Failed(format!(
            "{failures} of the input's statements or commands failed (the errors are above); \
             the others ran"
        )));
    }
    Ok(())
}

/// Whether `sql` ends in a complete statement, by SQLite's tokenizer
/// (`sqlite3_complete`: no database is involved).
fn is_complete(sql: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(sql) else {
        return true; // a NUL byte: let the daemon refuse it
    };
    // SAFETY: `c` is a valid NUL-terminated string for the whole call, and
    // sqlite3_complete only reads it.
    unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
}

/// Splits complete input into its statements, each with its `;`, at the
/// semicolons where SQLite's tokenizer says a statement ends.
fn split_statements(input: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, ch) in input.char_indices() {
        if ch == ';' && is_complete(&input[start..=i]) {
            let stmt = input[start..=i].trim();
            if !nexusd::is_blank_sql(stmt) {
                out.push(stmt);
            }
            start = i + 1;
        }
    }
    let rest = input[start..].trim();
    if !nexusd::is_blank_sql(rest) {
        out.push(rest);
    }
    out
}

/// What transaction control a statement typed at the prompt is.
#[derive(Debug, PartialEq)]
enum Control {
    Begin { immediate: bool },
    Commit,
    Rollback,
}

/// BEGIN [DEFERRED | IMMEDIATE | EXCLUSIVE] [TRANSACTION], COMMIT or END
/// [TRANSACTION], ROLLBACK [TRANSACTION]; ROLLBACK TO is a savepoint's and
/// goes to the daemon like any statement.
fn control(sql: &str) -> Option<Control> {
    let upper = sql.trim_end_matches(';').to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    let rest_is = |from: usize, allowed: &[&str]| {
        words[from..].iter().all(|w| allowed.contains(w)) && words.len() - from <= 1
    };
    match words.as_slice() {
        ["BEGIN", ..] => match words.get(1).copied() {
            None | Some("TRANSACTION") if rest_is(1, &["TRANSACTION"]) => {
                Some(Control::Begin { immediate: false })
            }
            Some("DEFERRED") if rest_is(2, &["TRANSACTION"]) => {
                Some(Control::Begin { immediate: false })
            }
            Some("IMMEDIATE" | "EXCLUSIVE") if rest_is(2, &["TRANSACTION"]) => {
                Some(Control::Begin { immediate: true })
            }
            _ => None,
        },
        ["COMMIT" | "END", ..] if rest_is(1, &["TRANSACTION"]) => Some(Control::Commit),
        ["ROLLBACK", ..] if rest_is(1, &["TRANSACTION"]) => Some(Control::Rollback),
        _ => None,
    }
}

/// Runs one statement: transaction control opens or ends the shell's
/// transaction; anything else goes to `run_statement`, inside the
/// transaction if one is open.
async fn run_sql(client: &Client, txn: &mut Option<Transaction>, sql: &str) -> Result<(), Failed> {
    match (control(nexusd::skip_blank_sql(sql)), txn.take()) {
        (Some(Control::Begin { .. }), Some(open)) => {
            let id = open.id();
            *txn = Some(open);
            return Err(Failed(format!(
                "transaction {id} is already open; COMMIT or ROLLBACK it first (SAVEPOINT nests)"
            )));
        }
        (Some(Control::Begin { immediate }), None) => {
            let begun = if immediate {
                client.transaction().await?
            } else {
                client.deferred_transaction().await?
            };
            outln!(
                "BEGIN (transaction {}, {})",
                begun.id(),
                if immediate { "immediate" } else { "deferred" }
            );
            *txn = Some(begun);
            return Ok(());
        }
        (Some(Control::Commit | Control::Rollback), None) => {
            return Err(Failed("no transaction is open; BEGIN opens one".to_owned()));
        }
        (Some(Control::Commit), Some(open)) => {
            open.commit().await?;
            outln!("COMMIT");
            return Ok(());
        }
        (Some(Control::Rollback), Some(open)) => {
            open.rollback().await?;
            outln!("ROLLBACK");
            return Ok(());
        }
        (None, open) => *txn = open,
    }
    let result = run_statement(client, txn.as_ref(), sql).await;
    if let Err(Failed(m)) = &result
        && m.starts_with("transaction expired")
    {
        // It is over on the daemon's side: leave the `*` prompt.
        *txn = None;
    }
    result
}

/// Runs one statement as a `Query`, which answers rows when the statement
/// returns columns and its changes when not, whatever its first word is.
async fn run_statement(
    client: &Client,
    txn: Option<&Transaction>,
    sql: &str,
) -> Result<(), Failed> {
    let params = Params::default();
    let result = match txn {
        Some(t) => t.run(sql, params).await?,
        None => client.run(sql, params).await?,
    };
    match result {
        StatementResult::Rows(rows) => print_table(&rows),
        StatementResult::Executed(done) => print_executed(&done),
    }
    Ok(())
}

/// Returns true to leave the shell.
async fn dot_command(client: &Client, line: &str) -> Result<bool, Failed> {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let arg = words.next();
    match cmd {
        ".quit" | ".exit" | ".q" => return Ok(true),
        ".help" => outln!(
            ".tables [PATTERN]   list tables\n.schema [TABLE]     show CREATE statements\n\
             .status             the daemon's status\n.quit               leave\n\
             Anything else is SQL, ended by ';'."
        ),
        ".tables" => {
            let rows = client
                .query(
                    "SELECT name FROM sqlite_schema WHERE type IN ('table','view') AND name NOT \
                     LIKE 'sqlite_%' AND name LIKE ?1 ORDER BY name",
                    Params::Positional(vec![Value::Text(arg.unwrap_or("%").to_owned())]),
                )
                .await?;
            print_table(&rows);
        }
        ".schema" => {
            let rows = client
                .query(
                    "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE \
                     'sqlite_%' AND (?1 IS NULL OR tbl_name = ?1) ORDER BY tbl_name, type DESC, name",
                    Params::Positional(vec![
                        arg.map_or(Value::Null, |a| Value::Text(a.to_owned())),
                    ]),
                )
                .await?;
            for row in rows.iter() {
                if let Some(v) = row.values().first() {
                    outln!("{};", display(v));
                }
            }
        }
        ".status" => print_status(&client.status().await?),
        other => {
            return Err(Failed(format!(
                "unknown command {other}; .help lists the commands"
            )));
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_splits_where_sqlite_says_statements_end() {
        assert_eq!(
            split_statements("CREATE TABLE t(x); INSERT INTO t VALUES (1);\n"),
            vec!["CREATE TABLE t(x);", "INSERT INTO t VALUES (1);"]
        );
        assert_eq!(
            split_statements("INSERT INTO t VALUES ('a;b'); SELECT 1; ;"),
            vec!["INSERT INTO t VALUES ('a;b');", "SELECT 1;"]
        );
        let trigger = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  \
                       INSERT INTO u VALUES (new.x);\n  DELETE FROM v;\nEND;";
        assert!(!is_complete(
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (1);"
        ));
        assert!(is_complete(trigger));
        assert_eq!(split_statements(trigger), vec![trigger]);
        assert!(!is_complete("SELECT 'unterminated;"));
        // Comments after a `;` end nothing and run as nothing.
        assert!(is_complete("SELECT 1; -- done\n"));
        assert_eq!(
            split_statements("SELECT 1; -- done\n/* and */ ;"),
            vec!["SELECT 1;"]
        );
    }

    #[test]
    fn transaction_control_is_recognised_and_savepoints_are_not() {
        assert_eq!(control("begin;"), Some(Control::Begin { immediate: false }));
        assert_eq!(
            control("BEGIN IMMEDIATE TRANSACTION"),
            Some(Control::Begin { immediate: true })
        );
        assert_eq!(
            control("begin exclusive"),
            Some(Control::Begin { immediate: true })
        );
        assert_eq!(control("commit"), Some(Control::Commit));
        assert_eq!(control("END TRANSACTION;"), Some(Control::Commit));
        assert_eq!(control("rollback"), Some(Control::Rollback));
        assert_eq!(control("ROLLBACK TO s"), None);
        assert_eq!(control("ROLLBACK TRANSACTION TO SAVEPOINT s"), None);
        assert_eq!(control("SAVEPOINT s"), None);
        assert_eq!(control("BEGIN nonsense"), None);
        assert_eq!(control("SELECT 1"), None);
    }
}
