//! Roles from peer credentials: clients run as other uids (setpriv), each
//! role checked both ways.

use std::process::Command;
use std::time::Duration;

use nexusd_client::{Client, params};
use nexusd_tests::{Daemon, nexusd_bin};

use crate::{rt, run};

/// `setpriv` runs `nexusd ctl` as other uids; each role is checked both
/// ways. Needs root (CI runs as root).
#[test]
fn roles_from_peer_credentials_allow_and_refuse() {
    crate::require_root("runs clients as other uids with setpriv");
    let tmp = crate::shared_tempdir();
    let config = tmp.path().join("nexusd.toml");
    std::fs::write(
        &config,
        "socket-mode = \"0666\"\n[access]\nread = [\"uid:2001\"]\nwrite = [\"uid:2002\", \"gid:2100\"]\n",
    )
    .expect("config");
    let mut d = Daemon::start(&["--config", config.to_str().expect("utf-8")]);
    let socket = d.socket().to_owned();
    let ctl_as = |uid: u32, gid: u32, args: &[&str]| {
        run(Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(nexusd_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&socket)
            .args(args))
    };
    let (ok, out) = ctl_as(0, 0, &["exec", "CREATE TABLE t(x)"]);
    assert!(ok, "root is admin: {out}");

    // read: queries yes, writes no.
    let (ok, out) = ctl_as(2001, 2001, &["query", "SELECT count(*) FROM t"]);
    assert!(ok, "uid 2001 may read: {out}");
    let (ok, out) = ctl_as(2001, 2001, &["exec", "INSERT INTO t VALUES (1)"]);
    assert!(!ok);
    assert!(
        out.contains("uid 2001 has the read role") && out.contains("needs the write role"),
        "{out}"
    );
    let (ok, out) = ctl_as(
        2001,
        2001,
        &["query", "INSERT INTO t VALUES (1) RETURNING x"],
    );
    assert!(!ok && out.contains("needs the write role"), "{out}");

    // write: writes yes, admin no; by uid and by group.
    let (ok, out) = ctl_as(2002, 2002, &["exec", "INSERT INTO t VALUES (2)"]);
    assert!(ok, "uid 2002 may write: {out}");
    let (ok, out) = ctl_as(2099, 2100, &["exec", "INSERT INTO t VALUES (3)"]);
    assert!(ok, "gid 2100 may write: {out}");
    let (ok, out) = ctl_as(2002, 2002, &["status"]);
    assert!(!ok);
    assert!(
        out.contains("uid 2002 has the write role") && out.contains("needs the admin role"),
        "{out}"
    );
    // The slow log holds every client's SQL: admins only.
    let (ok, out) = ctl_as(2002, 2002, &["slowlog"]);
    assert!(!ok && out.contains("needs the admin role"), "{out}");

    // Nobody else may connect at all.
    let (ok, out) = ctl_as(2003, 2003, &["query", "SELECT 1"]);
    assert!(!ok);
    assert!(out.contains("uid 2003 has no role on this nexusd"), "{out}");

    // Only what was allowed landed.
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(&socket).await.expect("connect");
        let rows = c
            .query("SELECT x FROM t ORDER BY x", params![])
            .await
            .expect("q");
        let xs: Vec<i64> = rows.iter().map(|r| r.get(0).expect("x")).collect();
        assert_eq!(xs, vec![2, 3]);
    });
    let log = d.log_text();
    assert!(log.contains("request refused by the access rules"), "{log}");
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(20)).success());
}
