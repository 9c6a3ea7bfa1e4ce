//! `nexusd ctl shell`: an interactive SQL shell over the client crate,
//! with line editing (rustyline), history, and sqlite3-style dot-commands.

use std::path::{Path, PathBuf};

use nexusd_client::{Client, Params, Value};

use crate::ctl::{Failed, display, print_executed, print_status, print_table};

/// `nexusd ctl shell`: SQL in, aligned tables out. Statements end with `;`
/// and may span lines; dot-commands are one line.
pub(crate) async fn run(client: &Client, socket: &Path) -> Result<(), Failed> {
    use rustyline::error::ReadlineError;

    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Failed(format!("could not start line editing: {e}")))?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".nexusd_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let status = client.status().await?;
    println!(
        "nexusd {} (SQLite {}) at {}\nEnd statements with ';'. .help for commands, .quit to leave.",
        status.server_version,
        status.sqlite_version,
        socket.display()
    );
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            "nexusd> "
        } else {
            "   ...> "
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
                Err(Failed(m)) => eprintln!("error: {m}"),
            }
            continue;
        }
        if trimmed.is_empty() && pending.is_empty() {
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut pending);
        let _ = editor.add_history_entry(sql.trim());
        if let Err(Failed(m)) = run_sql(client, sql.trim()).await {
            eprintln!("error: {m}");
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// Runs one statement: through `query` when it may return rows, else
/// through `execute`.
async fn run_sql(client: &Client, sql: &str) -> Result<(), Failed> {
    let head = sql
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    let returns_rows = matches!(
        head.as_str(),
        "SELECT" | "WITH" | "VALUES" | "PRAGMA" | "EXPLAIN"
    ) || sql.to_ascii_uppercase().contains("RETURNING");
    if returns_rows {
        let rows = client.query(sql, Params::default()).await?;
        print_table(&rows);
    } else {
        let done = client.execute(sql, Params::default()).await?;
        print_executed(&done);
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
        ".help" => println!(
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
                    println!("{};", display(v));
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
