//! One request's way down: check the peer's role against the access rules
//! in force, then route it to the engine (writes to the writer, queries to
//! the readers, or to the writer when SQLite says they write) or to the
//! admin commands. Every request gets exactly one answer, counted in the
//! metrics and the client's own counters.

use std::time::Instant;

use nexusd_protocol::{
    AdminRequest, DEFAULT_DB, ErrorBody, ErrorKind, Request, RequestBody, ResponseBody, TxnMode,
    TxnOp,
};

use crate::access::Role;
use crate::admin;
use crate::clients::ClientEntry;
use crate::context::Context;
use crate::engine::{Owner, ReadOutcome, WriteOp};
use crate::metrics::RequestKind;

/// Serves one request; always produces an answer.
pub(crate) async fn handle(ctx: &Context, req: Request, who: &ClientEntry) -> ResponseBody {
    let kind = match &req.body {
        RequestBody::Execute(_) => RequestKind::Execute,
        RequestBody::Query(_) => RequestKind::Query,
        RequestBody::Batch(_) => RequestKind::Batch,
        RequestBody::Admin(_) => RequestKind::Admin,
        RequestBody::Begin(_) | RequestBody::Transaction { .. } => RequestKind::Transaction,
    };
    who.started();
    let body = route(ctx, req, who).await;
    who.answered(matches!(body, ResponseBody::Error(_)));
    ctx.metrics.count_request(kind, &body);
    body
}

async fn route(ctx: &Context, req: Request, who: &ClientEntry) -> ResponseBody {
    let arrived = Instant::now();
    if req.db != DEFAULT_DB {
        return ResponseBody::Error(ErrorBody::new(
            ErrorKind::Unsupported,
            format!(
                "unknown database {:?}: this daemon serves only {DEFAULT_DB:?}",
                req.db
            ),
        ));
    }
    // Recomputed on every request, so a reload that revokes a role takes
    // effect on open connections too.
    let role = ctx.role_of(&who.peer);
    let needs = match &req.body {
        RequestBody::Execute(_) | RequestBody::Batch(_) => Role::Write,
        RequestBody::Query(_) | RequestBody::Admin(AdminRequest::Ping) => Role::Read,
        RequestBody::Admin(_) => Role::Admin,
        RequestBody::Begin(TxnMode::ReadOnly) => Role::Read,
        RequestBody::Begin(_) => Role::Write,
        // Ending one needs no more than reading; anything else in a
        // transaction that may write needs the write role, as it would
        // outside one.
        RequestBody::Transaction {
            op: TxnOp::Rollback,
            ..
        } => Role::Read,
        RequestBody::Transaction { txn, .. } => {
            if ctx.engine.transactions.mode_of(*txn) == Some(TxnMode::ReadOnly) {
                Role::Read
            } else {
                Role::Write
            }
        }
    };
    if role < Some(needs) {
        return forbidden(ctx, who, role, needs, request_name(&req.body));
    }
    let deadline = arrived + ctx.config().request_timeout(req.timeout_ms);
    let writer = &ctx.engine.writer;
    match req.body {
        RequestBody::Execute(st) => writer.submit(WriteOp::Execute(st), arrived, deadline).await,
        RequestBody::Query(st) => match ctx.engine.readers.query(st, arrived, deadline).await {
            ReadOutcome::Done(body) => body,
            ReadOutcome::NeedsWriter(st) => {
                if role < Some(Role::Write) {
                    return forbidden(ctx, who, role, Role::Write, "a query that writes");
                }
                writer.submit(WriteOp::Query(st), arrived, deadline).await
            }
        },
        RequestBody::Batch(stmts) if stmts.is_empty() => ResponseBody::Batch(Vec::new()),
        RequestBody::Batch(stmts) => {
            writer
                .submit(WriteOp::Batch(stmts), arrived, deadline)
                .await
        }
        RequestBody::Admin(admin) => admin::run(ctx, admin, who).await,
        RequestBody::Begin(mode) => {
            let owner = Owner {
                client_id: who.id,
                client_name: who.client_name.clone(),
                pid: who.peer.pid,
            };
            let max_open = ctx.config().max_transactions;
            ctx.engine
                .begin(mode, owner, max_open, arrived, deadline)
                .await
        }
        RequestBody::Transaction { txn, op } => {
            ctx.engine
                .in_transaction(txn, who.id, op, arrived, deadline)
                .await
        }
    }
}

fn forbidden(
    ctx: &Context,
    who: &ClientEntry,
    role: Option<Role>,
    needs: Role,
    what: &str,
) -> ResponseBody {
    let has = role.map_or("no".to_owned(), |r| format!("the {}", r.name()));
    let config = ctx
        .config()
        .config_path()
        .map_or("the config file".to_owned(), |p| p.display().to_string());
    tracing::warn!(uid = who.peer.uid, pid = ?who.peer.pid, needs = needs.name(), what, "request refused by the access rules");
    ResponseBody::Error(ErrorBody::new(
        ErrorKind::Forbidden,
        format!(
            "uid {} has {has} role on this nexusd; {what} needs the {} role. Not applied. An \
             admin can grant it in the [access] table of {config} and run `nexusd ctl reload`",
            who.peer.uid,
            needs.name()
        ),
    ))
}

fn request_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Execute(_) => "execute",
        RequestBody::Query(_) => "a query",
        RequestBody::Batch(_) => "a batch",
        RequestBody::Admin(AdminRequest::Ping) => "ping",
        RequestBody::Admin(_) => "an admin command",
        RequestBody::Begin(_) => "a transaction that may write",
        RequestBody::Transaction { .. } => "a statement in a transaction that may write",
    }
}
