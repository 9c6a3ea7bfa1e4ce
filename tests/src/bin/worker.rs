//! A load-generating client process for the integration tests: the tests
//! start several of these so that concurrency really crosses processes.
//!
//! Usage (each prints one summary line, `key=value` pairs, on success):
//!   worker insert SOCKET WORKER CLIENTS WRITES
//!   worker transfer SOCKET CLIENTS MOVES ACCOUNTS SEED
//!   worker claim SOCKET WORKER CLIENTS
//!   worker stream SOCKET WORKER CLIENTS      (prints "ack <id>" per write until the daemon dies)
//!   worker txn-transfer SOCKET CLIENTS MOVES ACCOUNTS SEED immediate|deferred
//!   worker genesis SOCKET WORKER CLIENTS
//!   worker txn-hold SOCKET                   (prints "holding <txn>", then waits to be killed)
//!   worker txn-stream SOCKET WORKER CLIENTS  (prints "committed <id>" per transaction until the daemon dies)
//!   worker hold SOCKET N                     (opens N connections, prints "held=H refused=R"
//!                                             and the first refusal, then waits for stdin to close)

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use nexusd_client::{Client, Statement, params};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> anyhow::Result<T> {
    args.get(i)
        .with_context(|| format!("missing argument {what}"))?
        .parse()
        .map_err(|_| anyhow::anyhow!("argument {what} is not valid: {:?}", args[i]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).context("missing mode")?.clone();
    let socket: String = arg(&args, 2, "SOCKET")?;
    match mode.as_str() {
        "insert" => {
            insert(
                &socket,
                arg(&args, 3, "WORKER")?,
                arg(&args, 4, "CLIENTS")?,
                arg(&args, 5, "WRITES")?,
            )
            .await
        }
        "transfer" => {
            transfer(
                &socket,
                arg(&args, 3, "CLIENTS")?,
                arg(&args, 4, "MOVES")?,
                arg(&args, 5, "ACCOUNTS")?,
                arg(&args, 6, "SEED")?,
            )
            .await
        }
        "claim" => claim(&socket, arg(&args, 3, "WORKER")?, arg(&args, 4, "CLIENTS")?).await,
        "stream" => stream(&socket, arg(&args, 3, "WORKER")?, arg(&args, 4, "CLIENTS")?).await,
        "txn-transfer" => {
            txn_transfer(
                &socket,
                arg(&args, 3, "CLIENTS")?,
                arg(&args, 4, "MOVES")?,
                arg(&args, 5, "ACCOUNTS")?,
                arg(&args, 6, "SEED")?,
                arg::<String>(&args, 7, "MODE")? == "deferred",
            )
            .await
        }
        "genesis" => genesis(&socket, arg(&args, 3, "WORKER")?, arg(&args, 4, "CLIENTS")?).await,
        "txn-hold" => txn_hold(&socket).await,
        "hold" => hold(&socket, arg(&args, 3, "N")?).await,
        "txn-stream" => {
            txn_stream(&socket, arg(&args, 3, "WORKER")?, arg(&args, 4, "CLIENTS")?).await
        }
        other => bail!("unknown mode {other:?}"),
    }
}

/// Each client (its own connection) writes WRITES rows, one request each.
async fn insert(socket: &str, worker: i64, clients: i64, writes: i64) -> anyhow::Result<()> {
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::connect(socket).await?;
        let (acked, errors) = (acked.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 0..writes {
                match client
                    .execute(
                        "INSERT INTO writes(worker, client, seq) VALUES (?1, ?2, ?3)",
                        params![worker, c, seq],
                    )
                    .await
                {
                    Ok(done) if done.rows_affected == 1 => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("worker {worker} client {c} seq {seq}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "acked={} errors={}",
        acked.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Tiny deterministic PRNG, so a failing run can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Each client moves random amounts between random accounts, atomically.
async fn transfer(
    socket: &str,
    clients: u64,
    moves: u64,
    accounts: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let applied = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::connect(socket).await?;
        let (applied, rejected, other) = (applied.clone(), rejected.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(7919).wrapping_add(c * 104_729 + 1) | 1);
            for _ in 0..moves {
                let from = (rng.next() % accounts) as i64;
                let to = ((from as u64 + 1 + rng.next() % (accounts - 1)) % accounts) as i64;
                let amount = (1 + rng.next() % 60) as i64;
                let result = client
                    .batch(vec![
                        Statement::new(
                            "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2",
                            params![amount, from],
                        ),
                        Statement::new(
                            "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
                            params![amount, to],
                        ),
                    ])
                    .await;
                match result {
                    Ok(_) => applied.fetch_add(1, Ordering::Relaxed),
                    Err(e)
                        if e.is_constraint()
                            && e.as_sql().and_then(|s| s.statement_index) == Some(0) =>
                    {
                        rejected.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("transfer failed unexpectedly: {e}");
                        other.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "applied={} rejected={} errors={}",
        applied.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Each client checks whether the singleton exists and inserts it if not,
/// as one batch; the batch's atomicity must leave exactly one row.
async fn claim(socket: &str, worker: i64, clients: i64) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::connect(socket).await?;
        tasks.push(tokio::spawn(async move {
            let owner = format!("{worker}-{c}");
            client
                .batch(vec![
                    Statement::new(
                        "SELECT count(*) FROM singleton WHERE name = 'leader'",
                        params![],
                    ),
                    Statement::new(
                        "INSERT INTO singleton(name, owner) SELECT 'leader', ?1 \
                         WHERE NOT EXISTS (SELECT 1 FROM singleton WHERE name = 'leader')",
                        params![owner],
                    ),
                ])
                .await
        }));
    }
    let (mut won, mut lost, mut errors) = (0, 0, 0);
    for t in tasks {
        match t.await? {
            Ok(results) => {
                let inserted = results
                    .get(1)
                    .and_then(|r| r.executed())
                    .map_or(0, |e| e.rows_affected);
                let seen: i64 = results
                    .first()
                    .and_then(|r| r.rows())
                    .and_then(|rows| rows.get(0).map(|row| row.get(0)))
                    .transpose()?
                    .unwrap_or(-1);
                // Atomic: whoever saw no row is exactly whoever inserted.
                if (seen == 0) != (inserted == 1) {
                    bail!("batch not atomic: saw {seen} rows but inserted {inserted}");
                }
                if inserted == 1 { won += 1 } else { lost += 1 }
            }
            Err(e) => {
                eprintln!("claim failed: {e}");
                errors += 1;
            }
        }
    }
    println!("won={won} lost={lost} errors={errors}");
    Ok(())
}

/// Writes until the daemon goes away, printing each acknowledged id the
/// moment its acknowledgement arrives.
async fn stream(socket: &str, worker: i64, clients: i64) -> anyhow::Result<()> {
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let unknown = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::connect(socket).await?;
        let (out, unknown) = (out.clone(), unknown.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 0.. {
                let id = worker * 1_000_000_000 + c * 10_000_000 + seq;
                match client
                    .execute(
                        "INSERT INTO acked(id, pad) VALUES (?1, randomblob(100))",
                        params![id],
                    )
                    .await
                {
                    Ok(_) => {
                        let mut out = out.lock().expect("stdout lock");
                        let _ = writeln!(out, "ack {id}");
                        let _ = out.flush();
                    }
                    Err(e) => {
                        if e.outcome_unknown() {
                            unknown.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!("done unknown={}", unknown.load(Ordering::Relaxed));
    Ok(())
}

/// Bank transfers as application code writes them: in a transaction, read
/// the balance, decide, write both sides, commit. A deferred transaction
/// that conflicts is retried whole, as the error says to.
async fn txn_transfer(
    socket: &str,
    clients: u64,
    moves: u64,
    accounts: u64,
    seed: u64,
    deferred: bool,
) -> anyhow::Result<()> {
    let applied = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::connect(socket).await?;
        let counters = (
            applied.clone(),
            refused.clone(),
            conflicts.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (applied, refused, conflicts, errors) = counters;
            let mut rng = Rng(seed.wrapping_mul(6151).wrapping_add(c * 49_157 + 3) | 1);
            for _ in 0..moves {
                let from = (rng.next() % accounts) as i64;
                let to = ((from as u64 + 1 + rng.next() % (accounts - 1)) % accounts) as i64;
                let amount = (1 + rng.next() % 60) as i64;
                loop {
                    match move_once(&client, deferred, from, to, amount).await {
                        Ok(true) => {
                            applied.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_conflict() => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => {
                            eprintln!("transfer failed unexpectedly: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "applied={} refused={} conflicts={} errors={}",
        applied.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One read-check-write transfer; `Ok(false)` when the balance is short
/// (rolled back).
async fn move_once(
    client: &Client,
    deferred: bool,
    from: i64,
    to: i64,
    amount: i64,
) -> nexusd_client::Result<bool> {
    let tx = if deferred {
        client.deferred_transaction().await?
    } else {
        client.transaction().await?
    };
    let rows = tx
        .query("SELECT balance FROM accounts WHERE id = ?1", params![from])
        .await?;
    let balance: i64 = rows.get(0).map(|r| r.get(0)).transpose()?.unwrap_or(0);
    if balance < amount {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.execute(
        "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2",
        params![amount, from],
    )
    .await?;
    tx.execute(
        "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
        params![amount, to],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The Genesis pattern: look for the default conversation, create it if
/// missing, in one transaction. There is no UNIQUE constraint to save it.
async fn genesis(socket: &str, worker: i64, clients: i64) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::connect(socket).await?;
        tasks.push(tokio::spawn(async move {
            let tx = client.transaction().await?;
            let found = tx
                .query(
                    "SELECT id FROM conversations WHERE is_default = 1",
                    params![],
                )
                .await?;
            let created = if found.is_empty() {
                tx.execute(
                    "INSERT INTO conversations(title, is_default) VALUES (?1, 1)",
                    params![format!("default, by {worker}-{c}")],
                )
                .await?;
                true
            } else {
                false
            };
            tx.commit().await?;
            Ok::<bool, nexusd_client::Error>(created)
        }));
    }
    let (mut created, mut found, mut errors) = (0, 0, 0);
    for t in tasks {
        match t.await? {
            Ok(true) => created += 1,
            Ok(false) => found += 1,
            Err(e) => {
                eprintln!("genesis failed: {e}");
                errors += 1;
            }
        }
    }
    println!("created={created} found={found} errors={errors}");
    Ok(())
}

/// Opens an immediate transaction, writes in it, and waits to be killed.
async fn txn_hold(socket: &str) -> anyhow::Result<()> {
    let client = Client::connect(socket).await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO held(note) VALUES ('never committed')",
        params![],
    )
    .await?;
    println!("holding {}", tx.id());
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}

/// Transactions of two rows each, until the daemon goes away; prints each
/// id once its commit is acknowledged.
async fn txn_stream(socket: &str, worker: i64, clients: i64) -> anyhow::Result<()> {
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::connect(socket).await?;
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0.. {
                let id = worker * 1_000_000_000 + c * 10_000_000 + seq;
                let attempt = async {
                    let tx = client.transaction().await?;
                    tx.execute("INSERT INTO pairs(id, half) VALUES (?1, 1)", params![id])
                        .await?;
                    tx.execute("INSERT INTO pairs(id, half) VALUES (?1, 2)", params![id])
                        .await?;
                    tx.commit().await
                };
                match attempt.await {
                    Ok(()) => {
                        let mut out = out.lock().expect("stdout lock");
                        let _ = writeln!(out, "committed {id}");
                        let _ = out.flush();
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!("done");
    Ok(())
}

/// Opens N connections (a client each) and keeps those admitted open until
/// stdin closes; prints how many were admitted and refused, and why the
/// first refusal was.
async fn hold(socket: &str, n: usize) -> anyhow::Result<()> {
    let mut held = Vec::new();
    let mut refused = 0;
    let mut why = String::new();
    for _ in 0..n {
        let options = nexusd_client::ClientOptions {
            reconnect_for: std::time::Duration::ZERO,
            ..Default::default()
        };
        match Client::connect_with(socket, options).await {
            Ok(c) => {
                c.ping().await?;
                held.push(c);
            }
            Err(e) => {
                refused += 1;
                if why.is_empty() {
                    why = e.to_string();
                }
            }
        }
    }
    println!("refusal: {why}");
    println!("held={} refused={refused}", held.len());
    std::io::stdout().flush()?;
    // Until the test closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await?;
    drop(held);
    Ok(())
}
