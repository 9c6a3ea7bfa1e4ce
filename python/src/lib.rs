//! `nexusd._nexusd`: the thin native layer of the Python package. It wraps
//! the Rust client crate (one codec, one connection implementation for
//! Rust and Python alike); `nexusd/__init__.py` gives it DB-API's shape.
//!
//! - Every wait on the daemon runs with the GIL released.
//! - Two tokio runtimes per process, made on first use (see `Flavor`): a
//!   current-thread one that blocking calls drive themselves, and a
//!   multi-thread one for asyncio. After a fork the child makes its own and
//!   never touches the parent's threads or socket: what it inherited is
//!   leaked, not dropped.
//! - Errors cross as `NativeError(kind, code, extended_code, message,
//!   statement_index, total_changes)`; the Python layer maps them onto
//!   DB-API's classes (total_changes: the rows a failed statement changed
//!   before it failed, which sqlite3 counts).

use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexusd_client::{
    BatchWriter, ClientOptions, Error, Executed, Params, RowStream, Rows, RunOutcome, Statement,
    StatementResult, TxnMode, Value,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOverflowError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyTuple};

create_exception!(
    _nexusd,
    NativeError,
    PyException,
    "An error from the daemon or the client."
);

/// Which runtime a client's connection lives on.
///
/// - `Blocking`: a current-thread runtime, driven by whichever thread is
///   waiting in a call (tokio hands the driver from one waiting thread to
///   the next). The thread that waits reads the socket itself: no runtime
///   thread wakes in between, which halves the context switches of a call.
///   Between calls nothing runs: work queued then (a dropped transaction's
///   rollback) goes out with the next call.
/// - `Asyncio`: a multi-thread runtime of one worker that runs by itself,
///   for `nexusd.aio`, whose futures settle with no Python thread waiting.
///   One worker, not one per core: the event loop's thread does the
///   Python side of every call, so a second worker only added wakes
///   between the two (64 tasks of point reads: 13.8 us of client CPU per
///   read against 16.1, docs/performance.md).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Blocking,
    Asyncio,
}

type Runtimes = Mutex<[Option<(u32, &'static tokio::runtime::Runtime)>; 2]>;

/// This process's runtimes, and the pid that made each.
static RUNTIMES: Runtimes = Mutex::new([None, None]);

/// The runtime of this flavor in this process; after a fork, a new one (the
/// parent's is leaked: its threads do not exist here).
fn runtime(flavor: Flavor) -> PyResult<&'static tokio::runtime::Runtime> {
    let pid = std::process::id();
    let mut slots = RUNTIMES.lock().map_err(|_| {
        native(
            "internal",
            0,
            0,
            "the runtime lock is poisoned".into(),
            None,
        )
    })?;
    let slot = &mut slots[flavor as usize];
    if let Some((owner, rt)) = *slot
        && owner == pid
    {
        return Ok(rt);
    }
    let built = match flavor {
        Flavor::Blocking => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Flavor::Asyncio => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nexusd-py")
            .enable_all()
            .build(),
    };
    let rt = built.map_err(|e| {
        native(
            "connect",
            0,
            0,
            format!("could not start the client's runtime: {e}"),
            None,
        )
    })?;
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt)
}

fn native(
    kind: &str,
    code: i32,
    extended: i32,
    message: String,
    statement_index: Option<usize>,
) -> PyErr {
    NativeError::new_err((
        kind.to_owned(),
        code,
        extended,
        message,
        statement_index,
        0u64,
    ))
}

fn to_py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::Sql(s) => {
            let kind = if s.refused { "refused" } else { "sql" };
            // With the rows it changed before it failed, which sqlite3
            // counts in its connection's total_changes.
            NativeError::new_err((
                kind,
                s.code,
                s.extended_code,
                s.message,
                s.statement_index,
                s.total_changes,
            ))
        }
        Error::Timeout(m) => native("timeout", 0, 0, m, None),
        Error::Overloaded(m) => native("overloaded", 0, 0, m, None),
        Error::TooLarge(m) => native("too_large", 0, 0, m, None),
        Error::ShuttingDown(m) => native("shutting_down", 0, 0, m, None),
        Error::Forbidden(m) => native("forbidden", 0, 0, m, None),
        Error::Connect { .. } => native("connect", 0, 0, message, None),
        Error::Disconnected {
            outcome_unknown: true,
            ..
        } => native("outcome_unknown", 0, 0, message, None),
        Error::Disconnected { .. } => native("disconnected", 0, 0, message, None),
        Error::Protocol(m) => native("protocol", 0, 0, m, None),
        Error::Server(m) => native("server", 0, 0, m, None),
        Error::Io(m) => native("io", 0, 0, m, None),
        Error::ConfigRejected(m) => native("config_rejected", 0, 0, m, None),
        Error::InvalidArgument(m) => native("invalid_argument", 0, 0, m, None),
        Error::TransactionExpired(m) => native("transaction_expired", 0, 0, m, None),
        Error::Conflict(m) => native("conflict", 0, 0, m, None),
        other => native("internal", 0, 0, other.to_string(), None),
    }
}

/// `nexusd._adapt`, set once at import: it applies `sqlite3`'s adapters
/// (`sqlite3.register_adapter`, and a value's `__conform__`) to a value
/// that is not exactly one of the types SQLite stores.
static ADAPT: pyo3::sync::GILOnceCell<PyObject> = pyo3::sync::GILOnceCell::new();

/// Sets the hook that adapts parameters (called once, by `nexusd`).
#[pyfunction]
fn set_adapt(py: Python<'_>, hook: PyObject) -> PyResult<()> {
    // A second import in the same process keeps the first hook; both are
    // the same function of the same module.
    let _ = ADAPT.set(py, hook);
    Ok(())
}

/// A Python value as SQLite stores it; `index` names it in errors.
///
/// As in `sqlite3`, the exact types SQLite stores go straight through;
/// any other value is adapted first (a registered adapter for its exact
/// type, or its `__conform__`), and what comes back, or the value itself
/// when nothing adapts it, is stored by the type it is an instance of (so
/// an `IntEnum` is stored as its int).
fn to_value(v: &Bound<'_, PyAny>, index: &str) -> PyResult<Value> {
    if v.is_none() {
        return Ok(Value::Null);
    }
    if v.is_exact_instance_of::<pyo3::types::PyInt>() {
        return int_value(v, index);
    }
    if v.is_exact_instance_of::<pyo3::types::PyFloat>() {
        return Ok(Value::Real(v.extract::<f64>()?));
    }
    if v.is_exact_instance_of::<pyo3::types::PyString>() {
        return Ok(Value::Text(v.extract::<String>()?));
    }
    if v.is_exact_instance_of::<PyBytes>() {
        return Ok(Value::Blob(v.downcast::<PyBytes>()?.as_bytes().to_vec()));
    }
    let adapted = match ADAPT.get(v.py()) {
        Some(hook) => hook.bind(v.py()).call1((v,))?,
        None => v.clone(),
    };
    stored_as(&adapted, index).ok_or_else(|| {
        let type_name = |o: &Bound<'_, PyAny>| {
            o.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        };
        let what = if adapted.is(v) {
            format!("type '{}' is not supported", type_name(v))
        } else {
            format!(
                "its adapter turned the '{}' into a '{}', which is not supported",
                type_name(v),
                type_name(&adapted)
            )
        };
        native(
            "programming",
            0,
            0,
            format!(
                "Error binding parameter {index}: {what}; pass int, float, str, bytes or None, \
                 or register an adapter with sqlite3.register_adapter (nexusd uses sqlite3's)"
            ),
            None,
        )
    })?
}

/// A value by the stored type it is an instance of; `None` if it is none.
fn stored_as(v: &Bound<'_, PyAny>, index: &str) -> Option<PyResult<Value>> {
    if v.is_none() {
        return Some(Ok(Value::Null));
    }
    if let Ok(b) = v.downcast::<pyo3::types::PyBool>() {
        return Some(Ok(Value::Integer(i64::from(b.is_true()))));
    }
    if v.is_instance_of::<pyo3::types::PyInt>() {
        return Some(int_value(v, index));
    }
    if v.is_instance_of::<pyo3::types::PyFloat>() {
        return Some(v.extract::<f64>().map(Value::Real));
    }
    if v.is_instance_of::<pyo3::types::PyString>() {
        return Some(v.extract::<String>().map(Value::Text));
    }
    if let Ok(b) = v.downcast::<PyBytes>() {
        return Some(Ok(Value::Blob(b.as_bytes().to_vec())));
    }
    if let Ok(b) = v.downcast::<PyByteArray>() {
        return Some(Ok(Value::Blob(b.to_vec())));
    }
    if v.is_instance_of::<PyMemoryView>() {
        return Some(v.call_method0("tobytes").and_then(|bytes| {
            Ok(Value::Blob(
                bytes.downcast::<PyBytes>()?.as_bytes().to_vec(),
            ))
        }));
    }
    None
}

fn int_value(v: &Bound<'_, PyAny>, index: &str) -> PyResult<Value> {
    v.extract::<i64>().map(Value::Integer).map_err(|_| {
        PyOverflowError::new_err(format!(
            "parameter {index} is {}, which is too large for SQLite's 64-bit INTEGER; \
             store it as text or a blob",
            v.str().map(|s| s.to_string()).unwrap_or_default()
        ))
    })
}

/// The prefixes SQLite reads a parameter's name after.
const NAME_PREFIXES: [char; 4] = [':', '@', '#', '$'];

/// Parameters as `sqlite3` takes them: a sequence for qmark style, a
/// mapping for named style (a name without one of `NAME_PREFIXES` gets `:`).
fn to_params(params: Option<&Bound<'_, PyAny>>) -> PyResult<Params> {
    let Some(params) = params.filter(|p| !p.is_none()) else {
        return Ok(Params::Positional(Vec::new()));
    };
    if let Ok(map) = params.downcast::<PyDict>() {
        let mut named = Vec::with_capacity(map.len());
        for (k, v) in map.iter() {
            let name: String = k.extract()?;
            let value = to_value(&v, &format!(":{}", name.trim_start_matches(NAME_PREFIXES)))?;
            let name = if name.starts_with(NAME_PREFIXES) {
                name
            } else {
                format!(":{name}")
            };
            named.push((name, value));
        }
        return Ok(Params::Named(named));
    }
    if params.is_instance_of::<pyo3::types::PyString>() || params.is_instance_of::<PyBytes>() {
        return Err(native(
            "programming",
            0,
            0,
            "parameters must be a sequence or a mapping, not a string".into(),
            None,
        ));
    }
    let mut values = Vec::new();
    for (i, v) in params.try_iter()?.enumerate() {
        values.push(to_value(&v?, &(i + 1).to_string())?);
    }
    Ok(Params::Positional(values))
}

fn value_to_py(py: Python<'_>, v: Value) -> PyResult<PyObject> {
    Ok(match v {
        Value::Null => py.None(),
        Value::Integer(i) => i.into_pyobject(py)?.into_any().unbind(),
        Value::Real(f) => f.into_pyobject(py)?.into_any().unbind(),
        Value::Text(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Blob(b) => PyBytes::new(py, &b).into_any().unbind(),
    })
}

/// Column names, the rows as a list of tuples, and the declared types
/// (`None` when the daemon sent none).
type PyRows = (Vec<String>, PyObject, Option<Vec<Option<String>>>);

fn rows_to_py(py: Python<'_>, rows: Rows) -> PyResult<PyRows> {
    let decltypes = (!rows.decltypes().is_empty()).then(|| rows.decltypes().to_vec());
    let (columns, values) = rows.into_parts();
    let list = PyList::empty(py);
    append_rows(py, &list, values)?;
    Ok((columns, list.into_any().unbind(), decltypes))
}

/// Appends each row of `values` to `list`, as a tuple.
fn append_rows(py: Python<'_>, list: &Bound<'_, PyList>, values: Vec<Vec<Value>>) -> PyResult<()> {
    for row in values {
        let values: Vec<PyObject> = row
            .into_iter()
            .map(|v| value_to_py(py, v))
            .collect::<PyResult<_>>()?;
        list.append(PyTuple::new(py, values)?)?;
    }
    Ok(())
}

/// What `result_to_py` gives, of a result whole or in parts. The parts are
/// taken one by one, with the GIL released while each is awaited, and made
/// Python rows as they come: the daemon reads the next part meanwhile, and
/// the whole result is never held twice (as parts and as Python objects).
fn outcome_to_py(
    py: Python<'_>,
    rt: &'static tokio::runtime::Runtime,
    outcome: RunOutcome,
) -> PyResult<PyObject> {
    let mut stream = match outcome {
        RunOutcome::Whole(r) => return result_to_py(py, r),
        RunOutcome::Parts(stream) => stream,
    };
    let columns = stream.columns().to_vec();
    let decltypes = (!stream.decltypes().is_empty()).then(|| stream.decltypes().to_vec());
    let list = PyList::empty(py);
    let (mut lastrowid, mut total) = (0, 0);
    let taken = loop {
        let part = py.allow_threads(|| rt.block_on(stream.next()));
        match part {
            Ok(Some(rows)) => {
                // The last part carries the statement's own counts.
                (lastrowid, total) = (rows.last_insert_rowid(), rows.total_changes());
                let (_, values) = rows.into_parts();
                if let Err(e) = append_rows(py, &list, values) {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(to_py_err(e)),
        }
    };
    if let Err(e) = taken {
        // Dropped unfinished, the stream queues word to stop the read; a
        // blocking client's runtime sends it only inside a call: now.
        let unfinished = !stream.is_finished();
        drop(stream);
        if unfinished {
            flush(rt);
        }
        return Err(e);
    }
    Ok(("rows", columns, list, decltypes, lastrowid, total)
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

/// `("rows", columns, rows, decltypes, lastrowid, total_changes)` or
/// `("executed", rowcount, lastrowid, total_changes)`; a lastrowid of 0
/// means the statement inserted no row, and total_changes counts the rows
/// it changed in all, triggers' and cascades' included.
fn result_to_py(py: Python<'_>, r: StatementResult) -> PyResult<PyObject> {
    match r {
        StatementResult::Rows(rows) => {
            let (lastrowid, total) = (rows.last_insert_rowid(), rows.total_changes());
            let (columns, list, decltypes) = rows_to_py(py, rows)?;
            Ok(("rows", columns, list, decltypes, lastrowid, total)
                .into_pyobject(py)?
                .into_any()
                .unbind())
        }
        StatementResult::Executed(Executed {
            rows_affected,
            last_insert_rowid,
            total_changes,
        }) => Ok(
            ("executed", rows_affected, last_insert_rowid, total_changes)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
        ),
    }
}

/// Runs `sql` once per parameter set of `seq_of_params` as one batch
/// through `writer`: each set is read and pushed as it comes, and each
/// part goes as it fills, with the GIL released, so neither the parameters
/// nor the statements are ever held whole. A part goes ahead: the daemon
/// applies it while the next is read. If reading or converting a set
/// fails, the batch is given up (none of it applied) and that error
/// raised. Returns `(rowcount, lastrowid, total_changes)`.
fn write_many(
    py: Python<'_>,
    rt: &'static tokio::runtime::Runtime,
    mut writer: BatchWriter,
    sql: &str,
    seq_of_params: &Bound<'_, PyAny>,
) -> PyResult<(u64, i64, u64)> {
    let mut totals = (0, 0, 0);
    for params in seq_of_params.try_iter()? {
        let statement = match params.and_then(|p| to_params(Some(&p))) {
            Ok(params) => Statement::new(sql, params),
            Err(e) => {
                py.allow_threads(|| rt.block_on(writer.abandon()));
                return Err(e);
            }
        };
        if let Some(part) = writer.push(statement) {
            let results = py
                .allow_threads(|| rt.block_on(writer.send_ahead(part)))
                .map_err(to_py_err)?;
            totals = add_totals(totals, &results);
        }
    }
    let results = py
        .allow_threads(|| rt.block_on(writer.finish()))
        .map_err(to_py_err)?;
    Ok(add_totals(totals, &results))
}

/// `(rowcount, lastrowid, total_changes)` of a batch: changes summed, the
/// rowid of the last row any of its statements inserted (0 if none did:
/// each statement's answer is its own, 0 when it inserted nothing), and
/// the rows its statements changed in all.
fn batch_totals(results: &[StatementResult]) -> (u64, i64, u64) {
    add_totals((0, 0, 0), results)
}

/// `totals` of a batch's earlier parts, with those of its next part's
/// `results` added.
fn add_totals(totals: (u64, i64, u64), results: &[StatementResult]) -> (u64, i64, u64) {
    results.iter().fold(totals, |(n, last, total), r| match r {
        StatementResult::Executed(e) => (
            n + e.rows_affected,
            if e.last_insert_rowid != 0 {
                e.last_insert_rowid
            } else {
                last
            },
            total + e.total_changes,
        ),
        StatementResult::Rows(rows) => (n, last, total + rows.total_changes()),
    })
}

/// A connection to the daemon; clones of the Rust client inside share
/// one socket, so Python connections share one too.
#[pyclass(frozen, module = "nexusd._nexusd")]
struct Client {
    inner: ManuallyDrop<nexusd_client::Client>,
    pid: u32,
    flavor: Flavor,
    /// This flavor's runtime in the process that made the client (a forked
    /// child never uses the client: the Python layer makes a new one).
    rt: &'static tokio::runtime::Runtime,
}

impl Client {
    /// Runs `f` on this client's runtime with the GIL released, and waits.
    fn wait<T, F, Fut>(&self, py: Python<'_>, f: F) -> PyResult<T>
    where
        T: Send,
        F: FnOnce(nexusd_client::Client) -> Fut + Send,
        Fut: std::future::Future<Output = nexusd_client::Result<T>>,
    {
        let rt = self.rt;
        let client = (*self.inner).clone();
        py.allow_threads(|| rt.block_on(f(client)))
            .map_err(to_py_err)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // In a forked child the parent's connection belongs to threads that
        // do not exist here: leave it alone.
        if std::process::id() == self.pid {
            // SAFETY: dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.inner) };
        }
    }
}

#[pymethods]
impl Client {
    /// `asyncio=True` makes a client for `nexusd.aio` (its own socket, on a
    /// runtime that runs by itself); else one for blocking calls.
    /// `decltypes=True` asks for each result column's declared type.
    #[new]
    #[pyo3(signature = (socket=None, client_name=None, timeout=None, asyncio=false, decltypes=false))]
    fn new(
        py: Python<'_>,
        socket: Option<PathBuf>,
        client_name: Option<String>,
        timeout: Option<f64>,
        asyncio: bool,
        decltypes: bool,
    ) -> PyResult<Self> {
        let flavor = if asyncio {
            Flavor::Asyncio
        } else {
            Flavor::Blocking
        };
        let rt = runtime(flavor)?;
        let path = socket.unwrap_or_else(nexusd_client::default_socket_path);
        let mut options = ClientOptions::default();
        if let Some(name) = client_name {
            options.client_name = name;
        }
        if let Some(t) = timeout.filter(|t| *t > 0.0) {
            options.request_timeout = Some(Duration::from_secs_f64(t));
        }
        options.declared_types = decltypes;
        let inner = py
            .allow_threads(|| rt.block_on(nexusd_client::Client::connect_with(path, options)))
            .map_err(to_py_err)?;
        Ok(Client {
            inner: ManuallyDrop::new(inner),
            pid: std::process::id(),
            flavor,
            rt,
        })
    }

    /// The process that made this client.
    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Runs one statement of any kind.
    #[pyo3(signature = (sql, params=None))]
    fn run(
        &self,
        py: Python<'_>,
        sql: &str,
        params: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let params = to_params(params)?;
        let r = self.wait(py, |client| async move {
            client.run_or_stream(sql, params).await
        })?;
        outcome_to_py(py, self.rt, r)
    }

    /// One SQL with many parameter sets, as one atomic batch request.
    /// Returns `(rowcount, lastrowid, total_changes)`.
    fn run_many(
        &self,
        py: Python<'_>,
        sql: &str,
        seq_of_params: &Bound<'_, PyAny>,
    ) -> PyResult<(u64, i64, u64)> {
        let rt = self.rt;
        let client = (*self.inner).clone();
        let writer = py
            .allow_threads(|| rt.block_on(client.batch_writer()))
            .map_err(to_py_err)?;
        write_many(py, rt, writer, sql, seq_of_params)
    }

    /// Statements without parameters, as one atomic batch (executescript).
    /// Returns `(lastrowid, total_changes)`: the rowid of the last row they
    /// inserted (0 if none), and the rows they changed in all.
    fn script(&self, py: Python<'_>, statements: Vec<String>) -> PyResult<(i64, u64)> {
        let statements = statements
            .into_iter()
            .map(|s| Statement::new(s, Params::default()));
        let results = self.wait(
            py,
            |client| async move { client.batch_all(statements).await },
        )?;
        let (_, lastrowid, total) = batch_totals(&results);
        Ok((lastrowid, total))
    }

    /// Opens an interactive transaction ("deferred", "immediate" or
    /// "read") and runs its first statement, in one round trip. Returns
    /// `(transaction, result, error)`: the transaction is open either way,
    /// and exactly one of `result` (as `run` gives it) and `error` (a
    /// `NativeError`) is set. A begin that fails raises, opening nothing.
    #[pyo3(signature = (mode, sql, params=None))]
    fn begin_run(
        &self,
        py: Python<'_>,
        mode: &str,
        sql: &str,
        params: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Transaction, PyObject, PyObject)> {
        let params = to_params(params)?;
        let mode = txn_mode(mode);
        let (tx, first) = self.wait(py, |client| async move {
            client.begin_with(mode, sql, params).await
        })?;
        begun_to_py(py, Transaction::new(tx, self.flavor, self.rt), first)
    }

    /// Opens an interactive transaction: "deferred", "immediate" or
    /// "read".
    fn begin(&self, py: Python<'_>, mode: &str) -> PyResult<Transaction> {
        let tx = self.wait(py, |client| async move { begin(&client, mode).await })?;
        Ok(Transaction::new(tx, self.flavor, self.rt))
    }

    /// Runs one statement and gives its rows a part at a time, as they
    /// are taken (`Stream`); waits for the first part.
    #[pyo3(signature = (sql, params=None))]
    fn stream(
        &self,
        py: Python<'_>,
        sql: &str,
        params: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Stream> {
        let params = to_params(params)?;
        let rows = self.wait(py, |client| async move {
            client.query_stream(sql, params).await
        })?;
        Ok(Stream::new(rows, self.flavor, self.rt))
    }

    /// `run`, for asyncio: returns an `asyncio.Future` of the running loop,
    /// settled by `completions.drain()` on the loop's thread.
    #[pyo3(signature = (completions, sql, params=None))]
    fn run_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
        sql: String,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = to_params(params)?;
        let client = (*self.inner).clone();
        spawn_future(py, self.flavor, completions, async move {
            client
                .run_or_stream(&sql, params)
                .await
                .map(Answer::Outcome)
        })
    }

    /// `stream`, for asyncio; settles to a `Stream`.
    #[pyo3(signature = (completions, sql, params=None))]
    fn stream_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
        sql: String,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = to_params(params)?;
        let client = (*self.inner).clone();
        spawn_future(py, self.flavor, completions, async move {
            client.query_stream(&sql, params).await.map(Answer::Stream)
        })
    }

    /// A `ManyWriter` for an asyncio `executemany` outside any
    /// transaction.
    fn batch_writer_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = (*self.inner).clone();
        spawn_future(py, self.flavor, completions, async move {
            client.batch_writer().await.map(Answer::Writer)
        })
    }

    /// `begin_run`, for asyncio; settles to `(transaction, result, error)`.
    #[pyo3(signature = (completions, mode, sql, params=None))]
    fn begin_run_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
        mode: String,
        sql: String,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = to_params(params)?;
        let client = (*self.inner).clone();
        spawn_future(py, self.flavor, completions, async move {
            client
                .begin_with(txn_mode(&mode), &sql, params)
                .await
                .map(|(tx, first)| Answer::Begun(tx, first))
        })
    }

    /// `begin`, for asyncio; settles to a `Transaction`.
    fn begin_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
        mode: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = (*self.inner).clone();
        spawn_future(py, self.flavor, completions, async move {
            begin(&client, &mode).await.map(Answer::Transaction)
        })
    }
}

/// A transaction's mode from sqlite3's name for it: "immediate" (or
/// "exclusive"), "read", else deferred.
fn txn_mode(mode: &str) -> TxnMode {
    match mode {
        "immediate" | "exclusive" => TxnMode::Immediate,
        "read" => TxnMode::ReadOnly,
        _ => TxnMode::Deferred,
    }
}

/// `(transaction, result, error)` of a `begin_run`: exactly one of the
/// first statement's result and its error (a `NativeError`) is set.
fn begun_to_py(
    py: Python<'_>,
    tx: Transaction,
    first: nexusd_client::Result<StatementResult>,
) -> PyResult<(Transaction, PyObject, PyObject)> {
    match first.map_err(to_py_err).and_then(|r| result_to_py(py, r)) {
        Ok(result) => Ok((tx, result, py.None())),
        Err(e) => Ok((tx, py.None(), e.into_value(py).into_any())),
    }
}

/// Opens a transaction: "immediate" (or "exclusive"), "read", else
/// deferred, as sqlite3's isolation levels name them.
async fn begin(
    client: &nexusd_client::Client,
    mode: &str,
) -> nexusd_client::Result<nexusd_client::Transaction> {
    match mode {
        "immediate" | "exclusive" => client.transaction().await,
        "read" => client.read_transaction().await,
        _ => client.deferred_transaction().await,
    }
}

/// What an async call settles to.
enum Answer {
    /// A statement's result whole, or its first part come
    /// (`run_async`): `("stream", Stream)` then, for the caller to read
    /// to its end.
    Outcome(RunOutcome),
    Totals((u64, i64, u64)),
    Transaction(nexusd_client::Transaction),
    /// A transaction and its first statement's outcome (`begin_run`).
    Begun(
        nexusd_client::Transaction,
        nexusd_client::Result<StatementResult>,
    ),
    Done,
    /// A batch writer for `executemany` (`batch_writer_async`).
    Writer(BatchWriter),
    /// A read begun, its first part come (`stream_async`).
    Stream(RowStream),
    /// A stream's next part and whether more follow, or None at its end
    /// (`Stream.next_async`).
    Part(Option<(Rows, bool)>),
}

impl Answer {
    fn into_py(self, py: Python<'_>) -> PyResult<PyObject> {
        match self {
            Answer::Outcome(RunOutcome::Whole(r)) => result_to_py(py, r),
            Answer::Outcome(RunOutcome::Parts(rows)) => {
                let rt = runtime(Flavor::Asyncio)?;
                let stream = Py::new(py, Stream::new(rows, Flavor::Asyncio, rt))?;
                Ok(("stream", stream).into_pyobject(py)?.into_any().unbind())
            }
            Answer::Totals(t) => Ok(t.into_pyobject(py)?.into_any().unbind()),
            Answer::Transaction(tx) => {
                let rt = runtime(Flavor::Asyncio)?;
                Ok(Py::new(py, Transaction::new(tx, Flavor::Asyncio, rt))?.into_any())
            }
            Answer::Begun(tx, first) => {
                let rt = runtime(Flavor::Asyncio)?;
                let begun = begun_to_py(py, Transaction::new(tx, Flavor::Asyncio, rt), first)?;
                Ok(begun.into_pyobject(py)?.into_any().unbind())
            }
            Answer::Done => Ok(py.None()),
            Answer::Writer(writer) => {
                Ok(Py::new(py, ManyWriter::new(writer, Flavor::Asyncio))?.into_any())
            }
            Answer::Stream(rows) => {
                let rt = runtime(Flavor::Asyncio)?;
                Ok(Py::new(py, Stream::new(rows, Flavor::Asyncio, rt))?.into_any())
            }
            Answer::Part(part) => Ok(part_to_py(py, part)?.into_pyobject(py)?.into_any().unbind()),
        }
    }
}

/// Where finished async calls wait for their event loop: a queue, and an
/// eventfd the loop watches (`loop.add_reader(fd, drain)`). The runtime's
/// threads never take the GIL to settle a future; the loop's thread
/// settles every finished one in one `drain`, one wakeup for many.
struct CompletionQueue {
    fd: std::os::fd::OwnedFd,
    done: Mutex<Vec<(PyObject, nexusd_client::Result<Answer>)>>,
}

impl CompletionQueue {
    fn push(&self, future: PyObject, answer: nexusd_client::Result<Answer>) {
        let Ok(mut done) = self.done.lock() else {
            return;
        };
        let was_empty = done.is_empty();
        done.push((future, answer));
        drop(done);
        if was_empty {
            // One wakeup covers everything queued until the loop drains.
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a local to our own eventfd.
            unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    (&one as *const u64).cast(),
                    8,
                )
            };
        }
    }
}

/// One event loop's completions (made by `nexusd.aio`, one per loop).
#[pyclass(frozen, module = "nexusd._nexusd")]
struct Completions {
    queue: Arc<CompletionQueue>,
}

#[pymethods]
impl Completions {
    #[new]
    fn new() -> PyResult<Self> {
        // SAFETY: eventfd(2) with flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(native(
                "internal",
                0,
                0,
                format!("eventfd failed: {}", std::io::Error::last_os_error()),
                None,
            ));
        }
        // SAFETY: a descriptor we just opened and own alone.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Completions {
            queue: Arc::new(CompletionQueue {
                fd,
                done: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The descriptor the loop watches.
    #[getter]
    fn fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.queue.fd)
    }

    /// Settles every finished call (on the loop's thread). A cancelled
    /// future is left alone: its request finished, nobody waits for it.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = 0u64;
        // SAFETY: reading 8 bytes into a local from our own eventfd.
        unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.queue.fd),
                (&mut buf as *mut u64).cast(),
                8,
            )
        };
        let done = match self.queue.done.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => return Ok(()),
        };
        for (future, answer) in done {
            let future = future.bind(py);
            if future.call_method0("done")?.is_truthy()? {
                continue;
            }
            match answer.map_err(to_py_err).and_then(|a| a.into_py(py)) {
                Ok(v) => future.call_method1("set_result", (v,))?,
                Err(e) => future.call_method1("set_exception", (e.into_value(py),))?,
            };
        }
        Ok(())
    }
}

/// Runs `work` on the runtime and returns a future of the caller's running
/// asyncio loop, settled through `completions` on that loop's thread.
/// Nothing holds a thread while it waits; a cancelled future is simply not
/// settled, and the connection stays usable.
fn spawn_future<'py, F>(
    py: Python<'py>,
    flavor: Flavor,
    completions: &Bound<'py, Completions>,
    work: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: std::future::Future<Output = nexusd_client::Result<Answer>> + Send + 'static,
{
    if flavor != Flavor::Asyncio {
        return Err(native(
            "programming",
            0,
            0,
            "this connection was made for blocking calls; use nexusd.aio.connect() for asyncio"
                .into(),
            None,
        ));
    }
    let rt = runtime(flavor)?;
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let queue = completions.get().queue.clone();
    let future_ref = future.clone().unbind();
    let mut task = Box::pin(async move {
        queue.push(future_ref, work.await);
    });
    // Polled once here, on the loop's thread, in the runtime's context: a
    // lone request's frame goes out now, from this thread, instead of once
    // a runtime worker has woken to send it. What is left (the reply) runs
    // on the runtime, which polls it again with its own waker.
    let _in_runtime = rt.enter();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if task.as_mut().poll(&mut cx).is_pending() {
        rt.spawn(task);
    }
    Ok(future)
}

/// An asyncio `executemany`: its parameter sets are read on the event
/// loop's thread a part at a time (`fill`), and each part goes while the
/// loop goes on (`send_async`), so no set is held longer than its part
/// takes to send. The batch applies all or nothing, as `run_many`'s does.
#[pyclass(frozen, module = "nexusd._nexusd")]
struct ManyWriter {
    writer: Arc<tokio::sync::Mutex<Option<BatchWriter>>>,
    /// The full part `fill` left for `send_async`.
    ready: Mutex<Option<Vec<Statement>>>,
    /// `(rowcount, lastrowid, total_changes)` of the parts sent so far.
    totals: Arc<Mutex<(u64, i64, u64)>>,
    flavor: Flavor,
    pid: u32,
}

fn writer_over() -> Error {
    Error::InvalidArgument("this executemany already finished or was given up".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each value under these locks is replaced whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ManyWriter {
    fn new(writer: BatchWriter, flavor: Flavor) -> Self {
        ManyWriter {
            writer: Arc::new(tokio::sync::Mutex::new(Some(writer))),
            ready: Mutex::new(None),
            totals: Arc::new(Mutex::new((0, 0, 0))),
            flavor,
            pid: std::process::id(),
        }
    }
}

#[pymethods]
impl ManyWriter {
    /// Reads parameter sets from the iterator `rows`, each bound to `sql`,
    /// until a part is full (`True`: send it with `send_async`) or `rows`
    /// ends (`False`: `finish_async`). What reading or converting a set
    /// raises comes out here; give the batch up with `abandon` then.
    fn fill(&self, sql: &str, rows: &Bound<'_, PyAny>) -> PyResult<bool> {
        let mut slot = self.writer.try_lock().map_err(|_| {
            to_py_err(Error::InvalidArgument(
                "executemany's previous part is still being sent; await send_async() first".into(),
            ))
        })?;
        let writer = slot.as_mut().ok_or_else(|| to_py_err(writer_over()))?;
        for params in rows.try_iter()? {
            let statement = Statement::new(sql, to_params(Some(&params?))?);
            if let Some(part) = writer.push(statement) {
                *lock(&self.ready) = Some(part);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Sends the part `fill` made; settles to None once it is on its way
    /// and the part before it applied. A failure ends the batch, none of
    /// it applied.
    fn send_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let part = lock(&self.ready).take();
        let (writer, totals) = (self.writer.clone(), self.totals.clone());
        spawn_future(py, self.flavor, completions, async move {
            let Some(part) = part else {
                return Ok(Answer::Done);
            };
            let mut slot = writer.lock().await;
            let writer = slot.as_mut().ok_or_else(writer_over)?;
            let results = writer.send_ahead(part).await?;
            let mut sum = lock(&totals);
            *sum = add_totals(*sum, &results);
            Ok(Answer::Done)
        })
    }

    /// Sends the rest and applies the batch; settles to `(rowcount,
    /// lastrowid, total_changes)` of the whole.
    fn finish_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (writer, totals) = (self.writer.clone(), self.totals.clone());
        spawn_future(py, self.flavor, completions, async move {
            let writer = writer.lock().await.take().ok_or_else(writer_over)?;
            let results = writer.finish().await?;
            let sum = *lock(&totals);
            Ok(Answer::Totals(add_totals(sum, &results)))
        })
    }

    /// Gives the batch up: none of it is applied; settles to None once it
    /// is given up, so that nothing sent after (a COMMIT) can overtake the
    /// rollback of its parts.
    fn abandon_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let writer = self.writer.clone();
        spawn_future(py, self.flavor, completions, async move {
            if let Some(writer) = writer.lock().await.take() {
                writer.abandon().await;
            }
            Ok(Answer::Done)
        })
    }

    /// Gives the batch up: none of it is applied. Runs on its own, after
    /// a part still being sent (a cancelled `send_async`), so there is
    /// nothing to await: a cancelled task's transaction is rolled back
    /// whole anyway, and outside one the batch's own transaction is.
    fn abandon(&self) -> PyResult<()> {
        let writer = self.writer.clone();
        runtime(self.flavor)?.spawn(async move {
            if let Some(writer) = writer.lock().await.take() {
                writer.abandon().await;
            }
        });
        Ok(())
    }
}

impl Drop for ManyWriter {
    fn drop(&mut self) {
        // Dropped unfinished (nothing gave it up): give it up, in the
        // process that made it.
        if std::process::id() != self.pid {
            return;
        }
        let Ok(mut slot) = self.writer.try_lock() else {
            return;
        };
        if let (Some(writer), Ok(rt)) = (slot.take(), runtime(self.flavor)) {
            rt.spawn(writer.abandon());
        }
    }
}

/// `(rows, lastrowid, total_changes, more)` of a stream's part (what
/// `result_to_py` gives of a whole result, less the columns; `more`:
/// whether parts follow it), or None once there are no more.
type PyPart = Option<(PyObject, i64, u64, bool)>;

fn part_to_py(py: Python<'_>, part: Option<(Rows, bool)>) -> PyResult<PyPart> {
    let Some((rows, more)) = part else {
        return Ok(None);
    };
    let (lastrowid, total) = (rows.last_insert_rowid(), rows.total_changes());
    let (_, list, _) = rows_to_py(py, rows)?;
    Ok(Some((list, lastrowid, total, more)))
}

/// One statement's rows, taken a part at a time (about 1 MiB each) as
/// `next` asks for them: what a `StreamingCursor` reads from, so a result
/// of any size costs this process a part or two. While open it holds one
/// of the daemon's readers (or, in a transaction, the transaction), up to
/// the request's time limit; `close` (or dropping it) ends the read.
#[pyclass(frozen, module = "nexusd._nexusd")]
struct Stream {
    inner: Arc<tokio::sync::Mutex<Option<RowStream>>>,
    columns: Vec<String>,
    decltypes: Option<Vec<Option<String>>>,
    pid: u32,
    flavor: Flavor,
    rt: &'static tokio::runtime::Runtime,
}

impl Stream {
    fn new(rows: RowStream, flavor: Flavor, rt: &'static tokio::runtime::Runtime) -> Stream {
        let decltypes = (!rows.decltypes().is_empty()).then(|| rows.decltypes().to_vec());
        Stream {
            columns: rows.columns().to_vec(),
            decltypes,
            inner: Arc::new(tokio::sync::Mutex::new(Some(rows))),
            pid: std::process::id(),
            flavor,
            rt,
        }
    }
}

/// The next part of the stream in `inner`, and whether more follow it;
/// None at its end, or once closed. A stream that has given its last
/// part, or failed, is let go at once.
async fn next_part(
    inner: Arc<tokio::sync::Mutex<Option<RowStream>>>,
) -> nexusd_client::Result<Option<(Rows, bool)>> {
    let mut slot = inner.lock().await;
    let Some(stream) = slot.as_mut() else {
        return Ok(None);
    };
    let part = stream.next().await;
    let more = !stream.is_finished();
    if !more || part.is_err() {
        *slot = None;
    }
    Ok(part?.map(|rows| (rows, more)))
}

#[pymethods]
impl Stream {
    /// The columns, in order (none for a statement that returns no rows).
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.columns.clone()
    }

    /// Each column's declared type, when the client asked for them.
    #[getter]
    fn decltypes(&self) -> Option<Vec<Option<String>>> {
        self.decltypes.clone()
    }

    /// The next part, `(rows, lastrowid, total_changes, more)`, waiting
    /// for it with the GIL released; None once every row has been given.
    fn next(&self, py: Python<'_>) -> PyResult<PyPart> {
        let (rt, inner) = (self.rt, self.inner.clone());
        let part = py
            .allow_threads(|| rt.block_on(next_part(inner)))
            .map_err(to_py_err)?;
        part_to_py(py, part)
    }

    /// `next`, for asyncio.
    fn next_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        spawn_future(py, self.flavor, completions, async move {
            next_part(inner).await.map(Answer::Part)
        })
    }

    /// Ends the read where it stands, freeing what it holds in the daemon;
    /// a no-op once it has ended. Returns at once.
    fn close(&self) {
        self.stop();
    }
}

impl Stream {
    fn stop(&self) {
        if std::process::id() != self.pid {
            return;
        }
        match self.inner.try_lock() {
            Ok(mut slot) => {
                // Dropping it tells the daemon to stop.
                if slot.take().is_some() && self.flavor == Flavor::Blocking {
                    flush(self.rt);
                }
            }
            // A `next` is under way (a cancelled await's): stop once it is
            // done.
            Err(_) => {
                let inner = self.inner.clone();
                self.rt.spawn(async move {
                    inner.lock().await.take();
                });
                if self.flavor == Flavor::Blocking {
                    flush(self.rt);
                }
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // The parent's read; its connection is not this process's.
            if let Ok(mut slot) = self.inner.try_lock()
                && let Some(stream) = slot.take()
            {
                std::mem::forget(stream);
            }
            return;
        }
        self.stop();
    }
}

/// An open interactive transaction. Its requests go one at a time (the
/// lock), from threads or from asyncio tasks alike.
#[pyclass(frozen, module = "nexusd._nexusd")]
struct Transaction {
    inner: Arc<tokio::sync::Mutex<Option<nexusd_client::Transaction>>>,
    pid: u32,
    /// The flavor of the client it was begun on, and that flavor's runtime
    /// (its connection's).
    flavor: Flavor,
    rt: &'static tokio::runtime::Runtime,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        let Ok(mut slot) = self.inner.try_lock() else {
            return;
        };
        let Some(tx) = slot.take() else { return };
        if std::process::id() != self.pid {
            // The parent's transaction; not this process's to roll back.
            std::mem::forget(tx);
            return;
        }
        // Dropped unfinished: the client queues its rollback. A blocking
        // client's runtime runs only inside calls, so send it now rather
        // than with the next call, or hold the writer until the lease ends.
        drop(tx);
        if self.flavor == Flavor::Blocking {
            flush(self.rt);
        }
    }
}

/// Lets a current-thread runtime run what is ready (a queued frame's
/// write), from outside any runtime.
fn flush(rt: &tokio::runtime::Runtime) {
    if tokio::runtime::Handle::try_current().is_err() {
        rt.block_on(async {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        });
    }
}

/// `f` on the transaction in `inner` while it is open, holding its lock
/// meanwhile; `ended()` once it is committed or rolled back.
async fn on_open<T>(
    inner: &tokio::sync::Mutex<Option<nexusd_client::Transaction>>,
    f: impl AsyncFnOnce(&nexusd_client::Transaction) -> nexusd_client::Result<T>,
) -> nexusd_client::Result<T> {
    match inner.lock().await.as_ref() {
        Some(tx) => f(tx).await,
        None => Err(ended()),
    }
}

fn ended() -> Error {
    Error::InvalidArgument("the transaction is already committed or rolled back".into())
}

impl Transaction {
    fn new(
        tx: nexusd_client::Transaction,
        flavor: Flavor,
        rt: &'static tokio::runtime::Runtime,
    ) -> Transaction {
        Transaction {
            inner: Arc::new(tokio::sync::Mutex::new(Some(tx))),
            pid: std::process::id(),
            flavor,
            rt,
        }
    }

    /// Runs `f` on the open transaction, with the GIL released.
    fn with<T, F, Fut>(&self, py: Python<'_>, f: F) -> PyResult<T>
    where
        T: Send,
        F: FnOnce(Arc<tokio::sync::Mutex<Option<nexusd_client::Transaction>>>) -> Fut + Send,
        Fut: std::future::Future<Output = nexusd_client::Result<T>>,
    {
        let rt = self.rt;
        let inner = self.inner.clone();
        py.allow_threads(|| rt.block_on(f(inner)))
            .map_err(to_py_err)
    }
}

#[pymethods]
impl Transaction {
    #[getter]
    fn id(&self) -> Option<u64> {
        self.inner.try_lock().ok()?.as_ref().map(|t| t.id())
    }

    #[pyo3(signature = (sql, params=None))]
    fn run(
        &self,
        py: Python<'_>,
        sql: &str,
        params: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let params = to_params(params)?;
        let r = self.with(py, |inner| async move {
            on_open(&inner, async move |tx| tx.run_or_stream(sql, params).await).await
        })?;
        outcome_to_py(py, self.rt, r)
    }

    /// As `Client.stream`, within the transaction. While the stream is
    /// open the transaction's other requests wait behind it on the daemon:
    /// take it to its end, or close it, first.
    #[pyo3(signature = (sql, params=None))]
    fn stream(
        &self,
        py: Python<'_>,
        sql: &str,
        params: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Stream> {
        let params = to_params(params)?;
        let rows = self.with(py, |inner| async move {
            on_open(&inner, async move |tx| tx.query_stream(sql, params).await).await
        })?;
        Ok(Stream::new(rows, self.flavor, self.rt))
    }

    fn run_many(
        &self,
        py: Python<'_>,
        sql: &str,
        seq_of_params: &Bound<'_, PyAny>,
    ) -> PyResult<(u64, i64, u64)> {
        let rt = self.rt;
        let inner = self.inner.clone();
        // Not held while the parameters are read: reading them may call
        // this transaction (a generator that queries the connection).
        let writer = py.allow_threads(|| {
            rt.block_on(async { inner.lock().await.as_ref().map(|tx| tx.batch_writer()) })
        });
        let Some(writer) = writer else {
            return Err(to_py_err(ended()));
        };
        write_many(py, rt, writer, sql, seq_of_params)
    }

    /// As `Client.script`, within the transaction.
    fn script(&self, py: Python<'_>, statements: Vec<String>) -> PyResult<(i64, u64)> {
        let statements: Vec<Statement> = statements
            .into_iter()
            .map(|s| Statement::new(s, Params::default()))
            .collect();
        let results = self.with(py, |inner| async move {
            on_open(&inner, async move |tx| tx.batch_all(statements).await).await
        })?;
        let (_, lastrowid, total) = batch_totals(&results);
        Ok((lastrowid, total))
    }

    /// Applies it; returns once it is durable. Ending one twice is a no-op.
    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |inner| end(inner, true))
    }

    fn rollback(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |inner| end(inner, false))
    }

    /// `run`, for asyncio (see `Client.run_async`).
    #[pyo3(signature = (completions, sql, params=None))]
    fn run_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
        sql: String,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = to_params(params)?;
        let inner = self.inner.clone();
        spawn_future(py, self.flavor, completions, async move {
            on_open(&inner, async move |tx| {
                tx.run_or_stream(&sql, params).await.map(Answer::Outcome)
            })
            .await
        })
    }

    /// `stream`, for asyncio; settles to a `Stream`.
    #[pyo3(signature = (completions, sql, params=None))]
    fn stream_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
        sql: String,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = to_params(params)?;
        let inner = self.inner.clone();
        spawn_future(py, self.flavor, completions, async move {
            on_open(&inner, async move |tx| {
                tx.query_stream(&sql, params).await.map(Answer::Stream)
            })
            .await
        })
    }

    /// A `ManyWriter` for an asyncio `executemany` within the
    /// transaction (in a savepoint of its own once it has parts).
    fn batch_writer_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        spawn_future(py, self.flavor, completions, async move {
            on_open(&inner, async move |tx| {
                Ok(Answer::Writer(tx.batch_writer()))
            })
            .await
        })
    }

    fn commit_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        spawn_future(py, self.flavor, completions, async move {
            end(inner, true).await.map(|()| Answer::Done)
        })
    }

    fn rollback_async<'py>(
        &self,
        py: Python<'py>,
        completions: &Bound<'py, Completions>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        spawn_future(py, self.flavor, completions, async move {
            end(inner, false).await.map(|()| Answer::Done)
        })
    }

    /// Rolls back without waiting for the answer (a cancelled task's
    /// transaction): the rollback is queued, and this returns at once.
    fn abandon(&self) {
        let inner = self.inner.clone();
        self.rt.spawn(async move {
            let _ = end(inner, false).await;
        });
    }
}

/// Commits or rolls back the transaction in `inner`, once; later calls are
/// no-ops.
async fn end(
    inner: Arc<tokio::sync::Mutex<Option<nexusd_client::Transaction>>>,
    commit: bool,
) -> nexusd_client::Result<()> {
    let Some(tx) = inner.lock().await.take() else {
        return Ok(());
    };
    if commit {
        tx.commit().await
    } else {
        tx.rollback().await
    }
}

/// The socket a client uses when given none, as the Rust client resolves
/// it (`$NEXUSD_SOCKET`, `$XDG_RUNTIME_DIR/nexusd.sock`, else
/// `/tmp/nexusd-<uid>.sock`).
#[pyfunction]
fn default_socket_path() -> PathBuf {
    nexusd_client::default_socket_path()
}

#[pymodule]
fn _nexusd(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Transaction>()?;
    m.add_class::<ManyWriter>()?;
    m.add_class::<Stream>()?;
    m.add_class::<Completions>()?;
    m.add_function(wrap_pyfunction!(default_socket_path, m)?)?;
    m.add_function(wrap_pyfunction!(set_adapt, m)?)?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
