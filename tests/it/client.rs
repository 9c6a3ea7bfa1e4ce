//! The client crate as an application uses it: the blocking client, value
//! types, named parameters, errors; and both clients' whole method sets.

use nexusd_client::{CheckpointMode, Error, Statement, StatementResult, params};
use nexusd_tests::Daemon;

use crate::{client, count, daemon_with_table, metric, rt};

#[test]
fn blocking_client_and_typed_values() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute(
        "CREATE TABLE v(i INTEGER, r REAL, t TEXT, b BLOB, n)",
        params![],
    )
    .expect("create");
    let blob: &[u8] = &[0, 1, 2];
    c.execute(
        "INSERT INTO v VALUES (?1, ?2, ?3, ?4, ?5)",
        params![7i32, 2.5, "txt", blob, None::<i64>],
    )
    .expect("insert");
    c.execute(
        "INSERT INTO v VALUES (:i, :r, :t, :b, :n)",
        nexusd_client::named_params! {
            ":i" => 8i64, ":r" => 1.0, ":t" => String::from("two"), ":b" => vec![9u8], ":n" => true,
        },
    )
    .expect("named insert");
    let rows = c
        .query("SELECT i, r, t, b, n FROM v ORDER BY i", params![])
        .expect("query");
    assert_eq!(rows.columns(), ["i", "r", "t", "b", "n"]);
    let r0 = rows.get(0).expect("row 0");
    assert_eq!(r0.get::<i64>(0).expect("i"), 7);
    assert_eq!(r0.get::<f64>(1).expect("r"), 2.5);
    assert_eq!(r0.get::<String>(2).expect("t"), "txt");
    assert_eq!(r0.get::<Vec<u8>>(3).expect("b"), vec![0, 1, 2]);
    assert_eq!(r0.get::<Option<i64>>(4).expect("n"), None);
    assert!(rows.get(1).expect("row 1").get::<bool>(4).expect("bool"));
    // INSERT .. RETURNING through query goes to the writer.
    let ret = c
        .query("INSERT INTO v(i) VALUES (99) RETURNING i * 2", params![])
        .expect("returning");
    assert_eq!(ret.get(0).expect("row").get::<i64>(0).expect("i"), 198);
    let e = c
        .execute("INSERT INTO nope VALUES (1)", params![])
        .expect_err("no such table");
    assert!(
        e.as_sql().expect("sql").message.contains("no such table"),
        "{e}"
    );
    let e = c.execute("BEGIN", params![]).expect_err("refused");
    assert!(e.as_sql().expect("sql").refused, "{e}");
    let e = c
        .query("SELECT ?1", params![])
        .expect_err("missing parameter");
    assert!(e.to_string().contains("1 parameter(s) but 0"), "{e}");
}

/// Every method of the async client, and the blocking client's twin of it,
/// against one daemon: the same answers both ways, and the typed errors.
#[test]
fn both_clients_walk_every_method() {
    let d = Daemon::start(&[]);
    let rt = rt();
    let a = rt.block_on(client(&d));
    let b = nexusd_client::blocking::Client::connect_with(
        d.socket(),
        nexusd_client::ClientOptions::default(),
    )
    .expect("blocking connect");
    assert_eq!(a.socket_path(), d.socket());
    assert_eq!(b.socket_path(), d.socket());

    // Data: execute, query, batch.
    rt.block_on(a.execute("CREATE TABLE w(k TEXT PRIMARY KEY, v INTEGER)", params![]))
        .expect("create");
    let done = rt
        .block_on(a.execute("INSERT INTO w VALUES ('a', 1)", params![]))
        .expect("async execute");
    assert_eq!(done.rows_affected, 1);
    let done = b
        .execute("INSERT INTO w VALUES ('b', 2)", params![])
        .expect("blocking execute");
    assert_eq!(done.rows_affected, 1);
    let batch = || {
        vec![
            Statement::new("UPDATE w SET v = v + 10", params![]),
            Statement::new("SELECT sum(v) FROM w", params![]),
        ]
    };
    let sum = |r: Vec<nexusd_client::StatementResult>| -> i64 {
        r[1].rows()
            .expect("rows")
            .get(0)
            .expect("row")
            .get(0)
            .expect("sum")
    };
    assert_eq!(sum(rt.block_on(a.batch(batch())).expect("async batch")), 23);
    assert_eq!(sum(b.batch(batch()).expect("blocking batch")), 43);
    let q = "SELECT k, v FROM w ORDER BY k";
    let via_a = rt.block_on(a.query(q, params![])).expect("async query");
    let via_b = b.query(q, params![]).expect("blocking query");
    assert_eq!(via_a, via_b);
    assert_eq!(via_a.len(), 2);

    // Operator methods.
    rt.block_on(a.ping()).expect("async ping");
    b.ping().expect("blocking ping");
    let (sa, sb) = (
        rt.block_on(a.status()).expect("status"),
        b.status().expect("status"),
    );
    assert_eq!((sa.pid, sa.db_path.clone()), (sb.pid, sb.db_path.clone()));
    assert!(sb.writes_committed >= 5, "{sb:?}");
    let st = b.stats().expect("blocking stats");
    assert!(
        st.requests
            .iter()
            .any(|(k, o, _)| k == "batch" && o == "ok"),
        "{st:?}"
    );
    let st = rt.block_on(a.stats()).expect("async stats");
    assert!(st.writes_committed >= 5);
    let ca = rt.block_on(a.clients()).expect("async clients");
    let cb = b.clients().expect("blocking clients");
    assert_eq!(ca.len(), 2, "{ca:?}");
    assert_eq!(cb.len(), 2, "{cb:?}");
    let cp = rt
        .block_on(a.checkpoint(CheckpointMode::Passive))
        .expect("async checkpoint");
    assert!(!cp.busy, "{cp:?}");
    b.checkpoint(CheckpointMode::Truncate)
        .expect("blocking checkpoint");
    assert_eq!(
        rt.block_on(a.integrity_check(false)).expect("integrity"),
        "ok"
    );
    assert_eq!(b.integrity_check(true).expect("quick_check"), "ok");
    assert!(
        rt.block_on(a.vacuum())
            .expect("vacuum")
            .contains("vacuumed")
    );
    assert!(b.vacuum().expect("vacuum").contains("vacuumed"));
    assert!(
        rt.block_on(a.optimize())
            .expect("optimize")
            .contains("optimized")
    );
    assert!(b.optimize().expect("optimize").contains("optimized"));
    assert!(
        rt.block_on(a.reload())
            .expect("reload")
            .contains("nothing reloadable changed")
    );
    assert!(
        b.reload()
            .expect("reload")
            .contains("nothing reloadable changed")
    );
    assert!(
        rt.block_on(a.metrics())
            .expect("metrics")
            .contains("nexusd_commits_total")
    );
    assert!(
        b.metrics()
            .expect("metrics")
            .contains("nexusd_requests_total")
    );
    let dest_a = d.dir.join("a.backup");
    let dest_b = d.dir.join("b.backup");
    assert!(
        rt.block_on(a.backup(&dest_a))
            .expect("backup")
            .contains("integrity_check ok")
    );
    assert!(
        b.backup(&dest_b)
            .expect("backup")
            .contains("integrity_check ok")
    );
    assert!(dest_a.exists() && dest_b.exists());

    // Errors with kinds of their own: a bad argument, and the daemon's own
    // I/O (it cannot create a file under /proc).
    let e = b.backup(&dest_a).expect_err("the destination exists");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
    let e = rt
        .block_on(a.backup("/proc/nexusd-backup-test.db"))
        .expect_err("not writable");
    assert!(matches!(e, Error::Io(_)), "{e}");
    assert!(e.to_string().contains("nothing was left there"), "{e}");

    // And last, shutdown from each: the second finds the daemon draining
    // or gone.
    b.shutdown().expect("blocking shutdown");
    let second = rt.block_on(a.shutdown());
    assert!(
        second.is_ok()
            || second
                .as_ref()
                .is_err_and(|e| e.is_disconnected() || matches!(e, Error::ShuttingDown(_))),
        "{second:?}"
    );
}

/// A config file the daemon cannot take back is `ConfigRejected`, and the
/// settings in force stay.
#[test]
fn a_rejected_reload_is_its_own_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("nexusd.toml");
    std::fs::write(&config, "max-in-flight = 64\n").expect("write config");
    let config_arg = config.display().to_string();
    let d = Daemon::start(&["--config", &config_arg]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    std::fs::write(&config, "max-in-flight = \"lots\"\n").expect("write config");
    let e = c.reload().expect_err("a broken file");
    assert!(matches!(e, Error::ConfigRejected(_)), "{e}");
    assert!(e.to_string().contains("the old one stays in force"), "{e}");
    let settings = c.status().expect("status").settings;
    assert!(
        settings.contains(&("max-in-flight".to_owned(), "64".to_owned())),
        "{settings:?}"
    );
}

fn send_and_static<T: Send + 'static>(_: &T) {}

/// The blocking client has the transaction API too; a transaction is
/// `Send`, outlives the `Client` that made it, and rolls back when dropped
/// unfinished, without blocking.
#[test]
fn transactions_from_both_clients_and_dropped_ones_roll_back() {
    let d = Daemon::start(&[]);
    let b = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    b.execute("CREATE TABLE t(x INTEGER)", params![])
        .expect("create");

    // Blocking: each kind, committed, rolled back, and dropped.
    let tx = b.transaction().expect("begin");
    send_and_static(&tx);
    tx.execute("INSERT INTO t VALUES (1)", params![])
        .expect("insert");
    tx.commit().expect("commit");
    let tx = b.deferred_transaction().expect("begin deferred");
    tx.execute("INSERT INTO t VALUES (2)", params![])
        .expect("insert");
    tx.rollback().expect("rollback");
    let tx = b.read_transaction().expect("begin read");
    let n: i64 = tx
        .query("SELECT count(*) FROM t", params![])
        .expect("count")
        .get(0)
        .expect("row")
        .get(0)
        .expect("n");
    assert_eq!(n, 1);
    drop(tx);
    let tx = b.transaction().expect("begin");
    tx.execute("INSERT INTO t VALUES (3)", params![])
        .expect("insert");
    let started = std::time::Instant::now();
    drop(tx);
    assert!(started.elapsed() < std::time::Duration::from_millis(100));

    // Async: a transaction outlives its client, and moves between threads.
    let rt = rt();
    let tx = rt.block_on(async {
        let c = client(&d).await;
        c.transaction().await.expect("begin")
    });
    send_and_static(&tx);
    rt.block_on(async move {
        tokio::spawn(async move {
            tx.execute("INSERT INTO t VALUES (4)", params![])
                .await
                .expect("insert");
            tx.commit().await.expect("commit");
        })
        .await
        .expect("task");
    });

    assert!(
        nexusd_tests::wait_until(std::time::Duration::from_secs(10), || b
            .transactions()
            .expect("list")
            .is_empty()),
        "the dropped transactions were not rolled back"
    );
    let rows = b
        .query("SELECT x FROM t ORDER BY x", params![])
        .expect("rows");
    let xs: Vec<i64> = rows.iter().map(|r| r.get(0).expect("x")).collect();
    assert_eq!(xs, vec![1, 4]);
}

/// `run` takes any statement and answers what it produced: changes for a
/// write, rows for a read or RETURNING, inside a transaction too.
#[test]
fn run_answers_rows_or_changes() {
    let d = Daemon::start(&[]);
    let b = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    b.execute("CREATE TABLE t(x INTEGER)", params![])
        .expect("create");
    let done = b
        .run("INSERT INTO t VALUES (7)", params![])
        .expect("insert");
    let e = done.executed().expect("a write answers its changes");
    assert_eq!((e.rows_affected, e.last_insert_rowid), (1, 1));
    let rows = b.run("SELECT x FROM t", params![]).expect("select");
    assert_eq!(rows.rows().expect("rows").len(), 1);
    let ret = b
        .run("INSERT INTO t VALUES (8) RETURNING x * 2", params![])
        .expect("returning");
    let got: i64 = ret
        .rows()
        .expect("rows")
        .get(0)
        .expect("row")
        .get(0)
        .expect("x");
    assert_eq!(got, 16);
    let tx = b.transaction().expect("begin");
    let e = tx.run("UPDATE t SET x = x + 1", params![]).expect("update");
    assert_eq!(e.executed().expect("changes").rows_affected, 2);
    let r = tx.run("SELECT sum(x) FROM t", params![]).expect("sum");
    let sum: i64 = r
        .rows()
        .expect("rows")
        .get(0)
        .expect("row")
        .get(0)
        .expect("s");
    assert_eq!(sum, 17);
    tx.commit().expect("commit");
}

/// A client given the database's path, as a program moving from SQLite
/// names it, reaches the daemon serving that file; so does `ctl`. The
/// daemon notes its socket in the lock file beside the database, and a
/// clean stop takes the note back.
#[test]
fn a_client_given_the_database_path_reaches_the_daemon_serving_it() {
    let (mut d, c) = crate::daemon_with_table(&[], "CREATE TABLE t(x)");
    c.execute("INSERT INTO t VALUES (5)", params![])
        .expect("insert");
    let by_path = nexusd_client::blocking::Client::connect(&d.db).expect("connect by the db");
    let socket = std::fs::canonicalize(d.socket()).expect("socket");
    assert_eq!(by_path.socket_path(), socket);
    let rows = by_path.query("SELECT x FROM t", params![]).expect("read");
    assert_eq!(rows.get(0).expect("row").get::<i64>(0).expect("x"), 5);
    let out = std::process::Command::new(nexusd_tests::nexusd_bin())
        .args(["ctl", "--socket"])
        .arg(&d.db)
        .args(["query", "SELECT x FROM t"])
        .output()
        .expect("ctl");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('5'),
        "{out:?}"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait(std::time::Duration::from_secs(20)).success());
    let lock = std::fs::read_to_string(nexusd_protocol::paths::lock_path_for(&d.db))
        .expect("the lock file stays");
    assert_eq!(lock, "", "a clean stop empties the lock file");
}

/// A client that asks for declared types gets them on every path a query
/// can take: a read, `INSERT ... RETURNING` on the writer, a batch, and
/// reads inside a transaction before and after it writes. An expression
/// has none. A client that did not ask gets none.
#[test]
fn rows_carry_each_columns_declared_type_on_every_path() {
    let (d, plain) = crate::daemon_with_table(
        &[],
        "CREATE TABLE ev(id INTEGER PRIMARY KEY, at TIMESTAMP, amount DECIMAL(10, 2), note)",
    );
    let unasked = plain.query("SELECT at FROM ev", params![]).expect("read");
    assert_eq!((unasked.decltype(0), unasked.decltypes().len()), (None, 0));
    let b = nexusd_client::blocking::Client::connect_with(
        d.socket(),
        nexusd_client::ClientOptions {
            declared_types: true,
            ..Default::default()
        },
    )
    .expect("connect");
    let decl = |r: &nexusd_client::Rows| -> Vec<Option<String>> {
        (0..r.columns().len())
            .map(|i| r.decltype(i).map(str::to_owned))
            .collect()
    };
    let want = vec![
        Some("TIMESTAMP".to_owned()),
        Some("DECIMAL(10, 2)".to_owned()),
        None,
        None,
    ];
    let sql = "SELECT at, amount, note, count(*) FROM ev";
    assert_eq!(decl(&b.query(sql, params![]).expect("read")), want);
    let ret = b
        .run(
            "INSERT INTO ev(at, amount) VALUES ('2026-11-24', 1) RETURNING at, id + 1",
            params![],
        )
        .expect("returning");
    assert_eq!(
        decl(ret.rows().expect("rows")),
        vec![Some("TIMESTAMP".to_owned()), None]
    );
    let batch = b
        .batch(vec![Statement::new(sql, params![])])
        .expect("batch");
    assert_eq!(decl(batch[0].rows().expect("rows")), want);
    let tx = b.deferred_transaction().expect("begin");
    assert_eq!(
        decl(&tx.query(sql, params![]).expect("snapshot read")),
        want
    );
    tx.execute("UPDATE ev SET note = 'x'", params![])
        .expect("write");
    assert_eq!(decl(&tx.query(sql, params![]).expect("writer read")), want);
    tx.commit().expect("commit");
}

/// Short reads run in place on the connection's thread and see every
/// acknowledged write; a read that outlasts the in-place budget moves to
/// the reader pool and still answers in full.
#[test]
fn short_reads_run_in_place_and_long_ones_move_to_the_pool() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)", params![])
        .expect("create");
    let before = metric(&c, "nexusd_reads_in_place_total");
    for k in 0..100i64 {
        c.execute(
            "INSERT INTO kv VALUES (?1, ?2)",
            params![k, format!("v{k}")],
        )
        .expect("insert");
        let rows = c
            .query("SELECT v FROM kv WHERE k = ?1", params![k])
            .expect("read");
        let v: String = rows.get(0).expect("a row").get(0).expect("text");
        assert_eq!(
            v,
            format!("v{k}"),
            "a read must see the write acknowledged before it"
        );
    }
    // Most, not all: a thread preempted mid-read on a busy machine runs
    // out of the budget, and that read goes to the pool instead.
    let in_place = metric(&c, "nexusd_reads_in_place_total") - before;
    assert!(
        in_place >= 50,
        "only {in_place} of 100 point reads ran in place"
    );
    let moved = metric(&c, "nexusd_reads_moved_to_pool_total");
    let rows = c
        .query(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000) \
             SELECT count(*), max(x) FROM n",
            params![],
        )
        .expect("a long read");
    let row = rows.get(0).expect("a row");
    assert_eq!(row.get::<i64>(0).expect("count"), 1_000_000);
    assert_eq!(row.get::<i64>(1).expect("max"), 1_000_000);
    assert!(
        metric(&c, "nexusd_reads_moved_to_pool_total") > moved,
        "the long read was not handed to the pool"
    );
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/pid/stat");
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')').expect("comm").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// With idle polling at its longest, one-at-a-time reads from both
/// clients are answered right, and once they stop the daemon goes back to
/// sleep: polling follows replies for at most `--idle-poll-us`, it never
/// keeps a core busy while idle.
#[test]
fn idle_polling_answers_right_and_an_idle_daemon_sleeps() {
    let (d, c) = crate::daemon_with_table(
        &["--idle-poll-us", "10000"],
        "CREATE TABLE p(id INTEGER PRIMARY KEY, v TEXT)",
    );
    for i in 0..100i64 {
        c.execute("INSERT INTO p VALUES (?1, ?2)", params![i, format!("v{i}")])
            .expect("insert");
    }
    for i in 0..500i64 {
        let id = i % 100;
        let rows = c
            .query("SELECT v FROM p WHERE id = ?1", params![id])
            .expect("read");
        let v: String = rows.get(0).expect("row").get(0).expect("v");
        assert_eq!(v, format!("v{id}"));
    }
    let rt = rt();
    let a = rt
        .block_on(nexusd_client::Client::connect(d.socket()))
        .expect("async");
    for id in 0..100i64 {
        let rows = rt
            .block_on(a.query("SELECT v FROM p WHERE id = ?1", params![id]))
            .expect("async read");
        let v: String = rows.get(0).expect("row").get(0).expect("v");
        assert_eq!(v, format!("v{id}"));
    }
    // Past the 10 ms budget, then a second with connections open and no
    // request: a daemon that kept polling would use most of a core.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = cpu_ticks(d.pid());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = cpu_ticks(d.pid()) - before;
    assert!(
        used <= 10,
        "the idle daemon used {used} ticks of CPU in 1 s (100 is a whole core)"
    );
    drop(c);
}

/// REGEXP, which SQLite's core leaves to the application, answers on every
/// connection a statement can reach: the writer (a CHECK constraint), the
/// readers, a transaction's, and the maintenance connections that check an
/// index built on it.
#[test]
fn regexp_answers_on_every_connection() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.execute(
        "CREATE TABLE codes(c TEXT CHECK (c REGEXP '^[A-Z]{3}$'))",
        params![],
    )
    .expect("a CHECK that calls REGEXP");
    c.execute("CREATE INDEX codes_a ON codes(c REGEXP '^A')", params![])
        .expect("an index on a REGEXP expression");
    for code in ["ABC", "AXE", "BOW"] {
        c.execute("INSERT INTO codes VALUES (?1)", params![code])
            .expect(code);
    }
    let e = c
        .execute("INSERT INTO codes VALUES ('abcd')", params![])
        .expect_err("the CHECK fails");
    assert!(e.to_string().contains("CHECK constraint failed"), "{e}");

    let count = |sql: &str| -> i64 {
        c.query(sql, params![])
            .expect(sql)
            .get(0)
            .expect("a row")
            .get(0)
            .expect("an integer")
    };
    assert_eq!(count("SELECT count(*) FROM codes WHERE c REGEXP 'B|W'"), 2);
    assert_eq!(count("SELECT count(*) FROM codes WHERE c REGEXP '^A'"), 2);
    assert_eq!(
        count("SELECT count(*) FROM codes WHERE c NOT REGEXP 'X'"),
        2
    );
    let txn = c.deferred_transaction().expect("begin");
    let rows = txn
        .query("SELECT c FROM codes WHERE c REGEXP '(?i)^b'", params![])
        .expect("in a transaction");
    assert_eq!(
        rows.get(0).expect("a row").get::<String>(0).expect("c"),
        "BOW"
    );
    txn.commit().expect("commit");

    let e = c
        .query("SELECT 'a' REGEXP '(?<=a)b'", params![])
        .expect_err("look-behind");
    let Error::Sql(sql) = &e else { panic!("{e:?}") };
    assert_eq!(sql.code, 1, "SQLITE_ERROR: {sql}");
    assert!(
        sql.message.contains("look-around") && sql.message.contains("'(?<=a)b'"),
        "{sql}"
    );

    assert_eq!(c.integrity_check(false).expect("integrity_check"), "ok");
    let dest = d.dir.join("codes.backup");
    assert!(
        c.backup(&dest)
            .expect("backup")
            .contains("integrity_check ok")
    );
}

/// Every client's writes share the daemon's one writer connection, so
/// SQLite's own rowid would be whichever client inserted last. Each
/// statement answers its own (0 when it inserted nothing), and SQL's
/// `last_insert_rowid()` answers the client's own, on the writer, on a
/// reader, in a batch and in a transaction.
#[test]
fn each_client_sees_its_own_last_insert_rowid() {
    let d = Daemon::start(&[]);
    let a = nexusd_client::blocking::Client::connect(d.socket()).expect("connect a");
    let b = nexusd_client::blocking::Client::connect(d.socket()).expect("connect b");
    a.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
        params![],
    )
    .expect("create");
    let rowid = |c: &nexusd_client::blocking::Client| -> i64 {
        c.query("SELECT last_insert_rowid()", params![])
            .expect("last_insert_rowid()")
            .get(0)
            .expect("a row")
            .get(0)
            .expect("an integer")
    };
    assert_eq!(rowid(&a), 0, "before any insert");
    let done = a
        .execute("INSERT INTO t(id, name) VALUES (5, 'a')", params![])
        .expect("a inserts");
    assert_eq!(done.last_insert_rowid, 5);
    let done = b
        .execute("INSERT INTO t(id, name) VALUES (9, 'b')", params![])
        .expect("b inserts");
    assert_eq!(done.last_insert_rowid, 9);
    for (sql, what) in [
        ("UPDATE t SET name = 'c' WHERE id = 9", "an update"),
        (
            "INSERT OR IGNORE INTO t(id, name) VALUES (6, 'a')",
            "an ignored insert",
        ),
        (
            "INSERT INTO t(name) VALUES ('a') ON CONFLICT(name) DO UPDATE SET name = 'a'",
            "an upsert that updated",
        ),
    ] {
        let done = a.execute(sql, params![]).expect(what);
        assert_eq!(done.last_insert_rowid, 0, "{what} inserted nothing");
    }
    assert_eq!(rowid(&a), 5, "a's own, not b's later insert");
    // Rows of a statement that inserted carry its last rowid; others 0.
    let r = nexusd_client::blocking::Client::connect(d.socket()).expect("connect r");
    let returned = r
        .query(
            "INSERT INTO t(id, name) VALUES (100, 'r1'), (101, 'r2') RETURNING id",
            params![],
        )
        .expect("insert returning");
    assert_eq!((returned.len(), returned.last_insert_rowid()), (2, 101));
    let returned = r
        .query(
            "UPDATE t SET name = name || '+' WHERE id = 100 RETURNING id",
            params![],
        )
        .expect("update returning");
    assert_eq!((returned.len(), returned.last_insert_rowid()), (1, 0));
    let selected = r.query("SELECT id FROM t", params![]).expect("select");
    assert_eq!(selected.last_insert_rowid(), 0);
    assert_eq!(rowid(&r), 101);
    assert_eq!(rowid(&b), 9);

    let results = a
        .batch(vec![
            Statement::new("INSERT INTO t(id, name) VALUES (20, 'p')", params![]),
            Statement::new(
                "INSERT INTO t(id, name) VALUES (last_insert_rowid() + 1, 'q')",
                params![],
            ),
            Statement::new("SELECT last_insert_rowid()", params![]),
        ])
        .expect("batch");
    match &results[2] {
        StatementResult::Rows(rows) => {
            assert_eq!(rows.get(0).and_then(|r| r.get::<i64>(0).ok()), Some(21))
        }
        other => panic!("{other:?}"),
    }

    let txn = b.transaction().expect("begin");
    assert_eq!(
        txn.query("SELECT last_insert_rowid()", params![])
            .expect("in a snapshot")
            .get(0)
            .and_then(|r| r.get::<i64>(0).ok()),
        Some(9)
    );
    txn.execute("INSERT INTO t(id, name) VALUES (30, 'r')", params![])
        .expect("insert in the transaction");
    txn.execute("UPDATE t SET name = 's' WHERE id = 30", params![])
        .expect("update in the transaction");
    assert_eq!(
        txn.query("SELECT last_insert_rowid()", params![])
            .expect("on the writer")
            .get(0)
            .and_then(|r| r.get::<i64>(0).ok()),
        Some(30)
    );
    txn.commit().expect("commit");
    assert_eq!(rowid(&b), 30);
    assert_eq!(rowid(&a), 21);
}

/// Each answer says how many rows its statement changed in all, as SQLite's
/// `total_changes()` counts them (a trigger's and a cascade's included,
/// and a failed statement's, rolled back though they are), so a driver can
/// keep a per-connection total: on the writer, in a batch, after a failure
/// and in a transaction.
#[test]
fn each_answer_carries_the_rows_its_statement_changed_in_all() {
    let d = Daemon::start(&[]);
    let c = nexusd_client::blocking::Client::connect(d.socket()).expect("connect");
    c.batch(
        [
            "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
            "CREATE TABLE k(id INTEGER PRIMARY KEY, p REFERENCES p(id) ON DELETE CASCADE)",
            "CREATE TABLE log(n)",
            "CREATE TRIGGER tr AFTER INSERT ON p BEGIN INSERT INTO log VALUES (new.id); END",
        ]
        .into_iter()
        .map(|sql| Statement::new(sql, params![]))
        .collect(),
    )
    .expect("schema");
    let base = count(&c, "SELECT total_changes()");
    let done = c
        .execute("INSERT INTO p(name) VALUES ('a'), ('b')", params![])
        .expect("insert");
    assert_eq!(
        (done.rows_affected, done.total_changes),
        (2, 4),
        "the trigger's two"
    );
    let done = c
        .execute("INSERT INTO k(p) VALUES (1), (1), (2)", params![])
        .expect("no trigger");
    assert_eq!((done.rows_affected, done.total_changes), (3, 3));
    let done = c
        .execute("DELETE FROM p WHERE id = 1", params![])
        .expect("cascade");
    assert_eq!(
        (done.rows_affected, done.total_changes),
        (1, 3),
        "two children"
    );
    let rows = c
        .query("INSERT INTO p(name) VALUES ('c') RETURNING id", params![])
        .expect("returning");
    assert_eq!(rows.total_changes(), 2);
    let read = c
        .query("SELECT count(*) FROM log", params![])
        .expect("read");
    assert_eq!(read.total_changes(), 0);
    match c.execute("INSERT INTO p(name) VALUES ('d'), ('b')", params![]) {
        // SQLite drops a failed statement's own count, not its trigger's
        // ('d''s log row), and so does the answer.
        Err(Error::Sql(e)) => assert_eq!(e.total_changes, 1, "{e}"),
        other => panic!("a UNIQUE failure: {other:?}"),
    }
    let results = c
        .batch(vec![
            Statement::new("INSERT INTO p(name) VALUES ('e')", params![]),
            Statement::new("UPDATE log SET n = n", params![]),
        ])
        .expect("batch");
    let changed: Vec<u64> = results
        .iter()
        .map(|r| r.executed().expect("executed").total_changes)
        .collect();
    assert_eq!(changed, [2, 4]);
    match c.batch(vec![
        Statement::new("INSERT INTO p(name) VALUES ('f')", params![]),
        Statement::new("INSERT INTO p(name) VALUES ('a'), ('a')", params![]),
    ]) {
        Err(Error::Sql(e)) => assert_eq!(e.total_changes, 2 + 1, "both statements': {e}"),
        other => panic!("a UNIQUE failure: {other:?}"),
    }
    let tx = c.transaction().expect("begin");
    let done = tx
        .execute("INSERT INTO p(name) VALUES ('g')", params![])
        .expect("in a transaction");
    assert_eq!(done.total_changes, 2);
    tx.rollback().expect("rollback");
    // Every count above is what SQL's total_changes() moved by, and what
    // sqlite3 counts for the same statements on one connection.
    assert_eq!(
        count(&c, "SELECT total_changes()") - base,
        4 + 3 + 3 + 2 + 1 + 2 + 4 + 3 + 2
    );
}

/// A batch over the frame limit goes in parts with `batch_all`, still all
/// or nothing: in a transaction of its own outside one, in a savepoint of
/// its own inside one, which goes on without it when it fails. A failing
/// statement's index counts over the whole batch.
#[test]
fn batch_all_sends_a_batch_over_the_frame_limit_in_parts_all_or_nothing() {
    let (_d, c) = daemon_with_table(
        &[],
        "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT UNIQUE, b BLOB)",
    );
    const ROWS: usize = 40_000; // 500 bytes each: 20 MB, over the 16 MiB frame
    let batch = |prefix: &str, last: Option<&str>| -> Vec<Statement> {
        (0..ROWS)
            .map(|i| {
                let name = match last {
                    Some(last) if i == ROWS - 1 => last.to_owned(),
                    _ => format!("{prefix}{i}"),
                };
                Statement::new(
                    "INSERT INTO big(name, b) VALUES (?1, ?2)",
                    params![name, vec![7u8; 500]],
                )
            })
            .collect()
    };
    let rows = |c: &nexusd_client::blocking::Client| count(c, "SELECT count(*) FROM big");
    match c.batch(batch("a", None)) {
        Err(Error::TooLarge(m)) => assert!(m.contains("exceeds the limit"), "{m}"),
        other => panic!("one request over the frame limit: {other:?}"),
    }
    let done = c.batch_all(batch("a", None)).expect("in parts");
    assert_eq!(done.len(), ROWS);
    assert_eq!(rows(&c), ROWS as i64);
    match c.batch_all(batch("b", Some("a0"))) {
        Err(Error::Sql(e)) => {
            assert_eq!(e.statement_index, Some(ROWS - 1), "{e}");
            assert!(e.message.contains("parts"), "{e}");
        }
        other => panic!("a UNIQUE failure in the last part: {other:?}"),
    }
    assert_eq!(rows(&c), ROWS as i64, "none of the failed batch applied");

    let tx = c.transaction().expect("begin");
    tx.execute("DELETE FROM big WHERE id > 10", params![])
        .expect("delete");
    assert!(tx.batch_all(batch("c", Some("a0"))).is_err());
    // From an iterator: each part is made and sent as it fills.
    tx.batch_all((0..ROWS).map(|i| {
        Statement::new(
            "INSERT INTO big(name, b) VALUES (?1, ?2)",
            params![format!("d{i}"), vec![7u8; 500]],
        )
    }))
    .expect("in parts, in the transaction");
    tx.commit().expect("commit");
    assert_eq!(
        rows(&c),
        10 + ROWS as i64,
        "the delete and the second batch"
    );
}

/// An insert into `big` of a 500-byte row named `name`.
fn insert_into_big(name: String) -> Statement {
    Statement::new(
        "INSERT INTO big(name, b) VALUES (?1, ?2)",
        params![name, vec![7u8; 500]],
    )
}

/// The rows of `big` whose name begins with `prefix`.
async fn named_in_big(a: &nexusd_client::Client, prefix: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM big WHERE name LIKE '{prefix}%'");
    let rows = a.query(&sql, params![]).await.expect("count");
    rows.get(0).expect("a row").get(0).expect("an integer")
}

/// `BatchWriter` sends each part as it fills, not at the end: the parts
/// sent so far are in the batch's own transaction (which another client
/// sees open, and whose rows it does not see), or in a savepoint of the
/// caller's transaction (whose own queries see them). `abandon` applies
/// none of it, and a writer whose part failed sends nothing more.
#[test]
fn batch_writer_sends_parts_as_they_fill_and_applies_all_or_nothing() {
    let (d, c) = daemon_with_table(
        &[],
        "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT UNIQUE, b BLOB)",
    );
    let rt = rt();
    let a = rt.block_on(client(&d));
    // Pushes rows named `prefix` from `from` + 1 on until a part is full,
    // and sends it; returns how many it pushed.
    let fill = async |w: &mut nexusd_client::BatchWriter, prefix: &str, from: usize| {
        let mut i = from;
        loop {
            i += 1;
            if let Some(part) = w.push(insert_into_big(format!("{prefix}{i}"))) {
                w.send(part).await.expect("a part");
                return i - from;
            }
        }
    };
    // The async client: the blocking one cannot run inside `block_on`.
    let named = async |prefix: &str| named_in_big(&a, prefix).await;
    rt.block_on(async {
        // Outside a transaction: three parts, then the rest.
        let mut w = a.batch_writer().await.expect("writer");
        let mut pushed = 0;
        for _ in 0..3 {
            pushed += fill(&mut w, "a", pushed).await;
            assert_eq!(
                a.transactions().await.expect("transactions").len(),
                1,
                "the batch's own transaction is open"
            );
            assert_eq!(named("a").await, 0, "nothing visible before the end");
        }
        let last = w.finish().await.expect("finish");
        assert_eq!(last.len(), 1, "the statement that did not fit");
        assert_eq!(named("a").await, pushed as i64);
        assert!(a.transactions().await.expect("transactions").is_empty());

        // Given up after two parts: nothing applied, nothing left open.
        let mut w = a.batch_writer().await.expect("writer");
        let first = fill(&mut w, "b", 0).await;
        fill(&mut w, "b", first).await;
        w.abandon().await;
        assert_eq!(named("b").await, 0);
        assert!(a.transactions().await.expect("transactions").is_empty());

        // Within a transaction: a savepoint the transaction's own queries
        // see into; a failing part undoes every part, the transaction goes
        // on, and the writer refuses to send more.
        let tx = a.transaction().await.expect("begin");
        tx.execute("INSERT INTO big(name) VALUES ('kept')", params![])
            .await
            .expect("insert");
        let mut w = tx.batch_writer();
        let (mut i, mut sent, mut parts, mut taken) = (0, 0, 0, None);
        let failed = loop {
            i += 1;
            // Once two parts are in, one statement of the third takes a
            // name already used.
            let name = if parts == 2 && taken.is_none() {
                taken = Some(i - 1);
                "a1".to_owned()
            } else {
                format!("c{i}")
            };
            if let Some(part) = w.push(insert_into_big(name)) {
                match w.send(part).await {
                    Ok(done) => sent += done.len(),
                    Err(e) => break e,
                }
                parts += 1;
                let seen = tx
                    .query("SELECT count(*) FROM big WHERE name LIKE 'c%'", params![])
                    .await
                    .expect("count");
                let seen: i64 = seen.get(0).expect("a row").get(0).expect("count");
                assert_eq!(seen, sent as i64, "the parts so far, inside the savepoint");
            }
        };
        match &failed {
            Error::Sql(e) => {
                assert_eq!(e.statement_index, taken, "{e}");
                assert!(e.message.contains("part 3"), "{e}");
            }
            other => panic!("a UNIQUE failure in the third part: {other:?}"),
        }
        match w.send(vec![insert_into_big("d".into())]).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("already failed"), "{m}"),
            other => panic!("a failed writer sends nothing more: {other:?}"),
        }
        tx.commit().await.expect("the transaction goes on");
        assert_eq!(named("c").await, 0, "none of the failed batch");
        assert_eq!(named("kept").await, 1, "the transaction's own statement");
    });
    drop(c);
}

/// `send_ahead` returns once its part is on its way and answers for the
/// part before it: every statement's result comes back once and in order.
/// A part that fails while the next fills is told by the next
/// `send_ahead`, or by `finish`, counted over the whole batch, and none of
/// the batch is applied.
#[test]
fn send_ahead_answers_each_part_with_the_next() {
    let (d, c) = daemon_with_table(
        &[],
        "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT UNIQUE, b BLOB)",
    );
    let rt = rt();
    let a = rt.block_on(client(&d));
    let named = async |prefix: &str| named_in_big(&a, prefix).await;
    rt.block_on(async {
        let mut w = a.batch_writer().await.expect("writer");
        let (mut pushed, mut parts, mut answered) = (0usize, 0, Vec::new());
        while parts < 3 {
            pushed += 1;
            if let Some(part) = w.push(insert_into_big(format!("a{pushed}"))) {
                let before = w.send_ahead(part).await.expect("a part");
                assert_eq!(before.is_empty(), parts == 0, "part {parts}");
                answered.extend(before);
                parts += 1;
            }
        }
        answered.extend(w.finish().await.expect("finish"));
        assert_eq!(answered.len(), pushed);
        let ids: Vec<i64> = answered
            .iter()
            .map(|r| r.executed().expect("an insert's result").last_insert_rowid)
            .collect();
        assert!(
            ids.windows(2).all(|p| p[1] == p[0] + 1),
            "results out of order"
        );
        assert_eq!(named("a").await, pushed as i64);

        // One statement of the second part takes a name already used: the
        // third part's send_ahead tells, and nothing of the batch is in.
        let mut w = a.batch_writer().await.expect("writer");
        let (mut i, mut parts, mut taken) = (0, 0, None);
        let failed = loop {
            i += 1;
            let name = if parts == 1 && taken.is_none() {
                taken = Some(i - 1);
                "a1".to_owned()
            } else {
                format!("b{i}")
            };
            if let Some(part) = w.push(insert_into_big(name)) {
                match w.send_ahead(part).await {
                    Ok(_) => parts += 1,
                    Err(e) => break e,
                }
            }
        };
        assert_eq!(parts, 2, "told when the part after it went");
        match &failed {
            Error::Sql(e) => {
                assert_eq!(e.statement_index, taken, "{e}");
                assert!(e.message.contains("part 2"), "{e}");
            }
            other => panic!("a UNIQUE failure in the second part: {other:?}"),
        }
        assert_eq!(named("b").await, 0);
        assert!(a.transactions().await.expect("transactions").is_empty());

        // The last part sent ahead fails: finish tells.
        let mut w = a.batch_writer().await.expect("writer");
        let mut i = 0;
        let sent = loop {
            i += 1;
            let name = if i == 2 {
                "a1".to_owned()
            } else {
                format!("e{i}")
            };
            if let Some(part) = w.push(insert_into_big(name)) {
                break w.send_ahead(part).await.expect("the first part goes");
            }
        };
        assert!(sent.is_empty());
        match w.finish().await {
            Err(Error::Sql(e)) => {
                assert_eq!(e.statement_index, Some(1), "{e}");
                assert!(e.message.contains("part 1"), "{e}");
            }
            other => panic!("a UNIQUE failure in the part sent ahead: {other:?}"),
        }
        assert_eq!(named("e").await, 0);
    });
    drop(c);
}
