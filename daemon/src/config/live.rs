//! The settings in force, and their reload: the config file is read again
//! from the command line as given, checked whole, and only what may change
//! in place is swapped in. A reader of the settings never waits on a
//! reload.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::ServeConfig;
use crate::access::{AccessRules, Peer, Role};
use crate::logging::LogReload;

pub(crate) struct Live {
    /// The settings in force; a reload swaps in a new one.
    config: ArcSwap<ServeConfig>,
    access: ArcSwap<AccessRules>,
    /// The command line as given, before the config file: a reload starts
    /// again from it.
    base: ServeConfig,
    /// Flags given on the command line; the file never overrides them.
    explicit: HashSet<String>,
    /// The socket file's group, which gets the write role by default.
    socket_gid: u32,
    log_reload: LogReload,
}

/// What a reload put in force.
pub(crate) struct Reloaded {
    /// What changed, and what needs a restart, in words.
    pub(crate) summary: String,
    pub(crate) config: Arc<ServeConfig>,
}

impl Live {
    pub(crate) fn new(
        base: ServeConfig,
        explicit: HashSet<String>,
        config: ServeConfig,
        access: AccessRules,
        socket_gid: u32,
        log_reload: LogReload,
    ) -> Live {
        Live {
            config: ArcSwap::from_pointee(config),
            access: ArcSwap::from_pointee(access),
            base,
            explicit,
            socket_gid,
            log_reload,
        }
    }

    /// The settings in force now.
    pub(crate) fn current(&self) -> Arc<ServeConfig> {
        self.config.load_full()
    }

    /// The peer's role under the access rules in force now.
    pub(crate) fn role_of(&self, peer: &Peer) -> Option<Role> {
        self.access.load().role_of(peer)
    }

    /// The access rules in force, in words.
    pub(crate) fn describe_access(&self) -> String {
        self.access.load().describe()
    }

    /// Re-reads the config file and puts in force what can change in place.
    /// A file that does not parse or validate changes nothing; the error
    /// says why.
    pub(crate) fn reload(&self) -> Result<Reloaded, String> {
        let reject =
            |e: anyhow::Error| format!("config not reloaded; the old one stays in force: {e:#}");
        let new = self
            .base
            .clone()
            .with_file(&self.explicit)
            .map_err(reject)?;
        new.validate().map_err(reject)?;
        let access = AccessRules::resolve(&new.access, self.socket_gid).map_err(reject)?;
        let old = self.current();
        let merged = old.with_reloadable_from(&new);
        // What the merge changed was reloadable; what it could not take
        // from the file needs a restart.
        let mut changed: Vec<String> = old
            .settings()
            .into_iter()
            .zip(merged.settings())
            .filter(|((_, was), (_, now))| was != now)
            .map(|((name, was), (_, now))| format!("{name} {was} -> {now}"))
            .collect();
        let mut needs_restart: Vec<String> = merged
            .settings()
            .into_iter()
            .zip(new.settings())
            .filter(|((_, kept), (_, wanted))| kept != wanted)
            .map(|((name, kept), (_, wanted))| {
                format!("{name} (still {kept}; the file says {wanted})")
            })
            .collect();
        if old.db_path() != new.db_path() || old.socket_path() != new.socket_path() {
            needs_restart.push("db or socket path".to_owned());
        }
        let old_rules = self.access.load_full();
        if *old_rules != access {
            changed.push(format!(
                "access {} -> {}",
                old_rules.describe(),
                access.describe()
            ));
        }
        if merged.log_level != old.log_level {
            (self.log_reload)(&merged.log_level).map_err(reject)?;
        }
        let merged = Arc::new(merged);
        self.access.store(Arc::new(access));
        self.config.store(merged.clone());
        let mut summary = if changed.is_empty() {
            "nothing reloadable changed".to_owned()
        } else {
            format!("changed: {}", changed.join("; "))
        };
        if !needs_restart.is_empty() {
            tracing::warn!(
                "config changes that need a restart: {}",
                needs_restart.join("; ")
            );
            summary.push_str(&format!(
                ". Needs a restart to take effect: {}",
                needs_restart.join("; ")
            ));
        }
        Ok(Reloaded {
            summary,
            config: merged,
        })
    }
}
