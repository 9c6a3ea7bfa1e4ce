//! One thread, one blocking call at a time: the mean round trip of a point
//! read through the blocking client, the way a Python program's thread
//! calls the daemon. `python/bench.py` runs it beside the Python driver to
//! measure what the binding adds.
//!
//! ```text
//! cargo run --release -p nexusd-client --example round_trip -- SOCKET CALLS ROWS
//! ```
//!
//! Expects `bench(id INTEGER PRIMARY KEY, payload)` with ROWS rows; prints
//! `{"calls": N, "us_per_call": X}`.

use std::process::ExitCode;
use std::time::Instant;

use nexusd_client::{blocking::Client, params};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(socket), Some(calls), Some(rows)) = (
        args.first(),
        args.get(1).and_then(|v| v.parse::<i64>().ok()),
        args.get(2).and_then(|v| v.parse::<i64>().ok()),
    ) else {
        eprintln!("usage: round_trip SOCKET CALLS ROWS (CALLS and ROWS positive integers)");
        return ExitCode::from(2);
    };
    let db = match Client::connect(socket) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("round_trip: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sql = "SELECT payload FROM bench WHERE id = ?1";
    let rows = rows.max(1);
    for i in 0..200 {
        if let Err(e) = db.query(sql, params![i % rows + 1]) {
            eprintln!("round_trip: {e}");
            return ExitCode::FAILURE;
        }
    }
    let started = Instant::now();
    for i in 0..calls {
        if let Err(e) = db.query(sql, params![i % rows + 1]) {
            eprintln!("round_trip: {e}");
            return ExitCode::FAILURE;
        }
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / calls.max(1) as f64;
    println!("{{\"calls\": {calls}, \"us_per_call\": {us:.2}}}");
    ExitCode::SUCCESS
}
