//! Config reload: SIGHUP re-reads the file in place, and a broken file
//! changes nothing.

use std::time::Duration;

use nexusd_client::{Client, params};
use nexusd_tests::{Daemon, wait_until};

use crate::rt;

/// SIGHUP re-reads the file without dropping connections and logs what
/// changed; a broken file is rejected and the old settings stay.
#[test]
fn sighup_reloads_the_config_and_rejects_a_broken_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("nexusd.toml");
    std::fs::write(&config, "max-read-ms = 30000\nmax-connections = 100\n").expect("config");
    let d = Daemon::start(&["--config", config.to_str().expect("utf-8")]);
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(d.socket()).await.expect("connect");
        c.execute("CREATE TABLE t(x)", params![])
            .await
            .expect("create");
        let setting = |s: &nexusd_client::Status, k: &str| {
            s.settings
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };

        std::fs::write(
            &config,
            "max-read-ms = 1234\nmax-connections = 50\nlog-level = \"debug\"\nreaders = 9\n",
        )
        .expect("config");
        d.signal(libc::SIGHUP);
        assert!(wait_until(Duration::from_secs(10), || d
            .log_text()
            .contains("config reloaded")));
        // The same connection still works, and sees the new settings.
        let s = c.status().await.expect("status over the old connection");
        assert_eq!(setting(&s, "max-read-ms"), "1234");
        assert_eq!(setting(&s, "max-connections"), "50");
        assert_eq!(setting(&s, "log-level"), "debug");
        assert_eq!(setting(&s, "readers"), "4", "readers needs a restart");
        let log = d.log_text();
        assert!(log.contains("max-read-ms 30000 -> 1234"), "{log}");
        assert!(log.contains("readers (still 4; the file says 9)"), "{log}");

        std::fs::write(&config, "max-read-ms = \"soon\"\n").expect("config");
        d.signal(libc::SIGHUP);
        assert!(wait_until(Duration::from_secs(10), || d
            .log_text()
            .contains("config not reloaded; the old one stays in force")));
        let s = c.status().await.expect("status");
        assert_eq!(setting(&s, "max-read-ms"), "1234");
        c.execute("INSERT INTO t VALUES (1)", params![])
            .await
            .expect("still serving");
    });
}
