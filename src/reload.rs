//! Live reloads of the routing file: edit `routing.yaml`, and the next call
//! uses it; no call in flight fails.
//!
//! A reload reads and validates the whole file, builds a whole new table
//! (keeping every upstream whose definition did not change, with its
//! endpoints, connections, load and health), and swaps it in atomically.
//! Calls hold the table they started with until they end, so nothing in
//! flight sees a change. A file that fails to read, parse or validate changes
//! nothing: the error is logged with its line and column and the running
//! table stays.
//!
//! Triggers: a file watcher on the file's directory (which sees editors'
//! rename-on-save and the symlink swap Kubernetes uses to update a mounted
//! ConfigMap), debounced; SIGHUP; and the admin endpoint. Reloads run one at
//! a time, and a file whose content did not change is not reloaded.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::balance::AbortOnDrop;
use crate::balance::Connectors;
use crate::config::{Config, ConfigError};
use crate::route::{RoutingTable, SharedTable};
use crate::stack::guard::{Guard, SharedGuard};
use crate::state::SharedLimits;
use crate::telemetry::metrics;

/// Quiet time after the last file event before reloading: editors and
/// Kubernetes touch several files for one change.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(100);

/// Applies the routing file to the live table on demand.
pub struct Reloader {
    /// The routing file.
    path: PathBuf,
    /// The live table.
    table: SharedTable,
    /// What new upstreams are built with.
    connectors: Connectors,
    /// What was applied last; the lock makes reloads take turns.
    applied: tokio::sync::Mutex<Applied>,
    /// How many tables have been applied, the first one included.
    generation: AtomicU64,
    /// The access policy (keys, limits), swapped with the table so a call
    /// never sees the keys of one file and the routes of another for long.
    guard: Option<SharedGuard>,
    /// The limits counted across replicas, when the server shares them:
    /// each new file's limits apply to the same connection and leases.
    shared: Option<Arc<SharedLimits>>,
}

struct Applied {
    /// The config in force.
    config: Config,
    /// The file content it came from, when known.
    text: Option<String>,
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new table is in force.
    Applied {
        /// Its generation number.
        generation: u64,
        /// Settings in the file that only a restart applies.
        needs_restart: Vec<String>,
    },
    /// The file did not change since the last reload.
    Unchanged,
    /// The file is broken; the table in force stays.
    Rejected(ConfigError),
}

// === impl Reloader ===

impl Reloader {
    /// A reloader for the table built from `config`, read from `path`.
    pub(crate) fn new(
        path: PathBuf,
        config: Config,
        table: SharedTable,
        connectors: Connectors,
    ) -> Self {
        Reloader {
            path,
            table,
            connectors,
            applied: tokio::sync::Mutex::new(Applied { config, text: None }),
            generation: AtomicU64::new(1),
            guard: None,
            shared: None,
        }
    }

    /// Also applies each new file's keys and limits to `guard`, keeping the
    /// quotas of keys and routes whose limits did not change.
    pub(crate) fn guarding(mut self, guard: SharedGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Also applies each new file's limits to the limits shared across
    /// replicas, keeping the store's connection and the leases of keys and
    /// routes whose limits did not change (the counts live in the store).
    pub(crate) fn sharing(mut self, shared: Option<Arc<SharedLimits>>) -> Self {
        self.shared = shared;
        self
    }

    /// The routing file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table in force.
    pub(crate) fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// How many tables have been applied, the first one included.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Reads the file again and applies it if it changed and is valid.
    /// `trigger` says why, for the log.
    pub async fn reload(&self, trigger: &str) -> ReloadOutcome {
        let mut applied = self.applied.lock().await;
        let source = self.path.display().to_string();
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(err) => {
                return self.reject(ConfigError::unreadable(&source, &err), trigger);
            }
        };
        if applied.text.as_deref() == Some(text.as_str()) {
            return ReloadOutcome::Unchanged;
        }
        let config = match Config::parse(&text, &source, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(err) => return self.reject(err, trigger),
        };
        let previous = self.table.load_full();
        let table = match RoutingTable::rebuild(&config, &self.connectors, Some(&previous)) {
            Ok(table) => table,
            Err(err) => {
                return self.reject(ConfigError::unusable(&source, err.message()), trigger);
            }
        };
        let mut needs_restart = Vec::new();
        if config.listen.tls != applied.config.listen.tls {
            needs_restart.push(
                "listen.tls: certificates and the client CA apply after a restart".to_string(),
            );
        }
        if config.limits.max_request_size != applied.config.limits.max_request_size
            || config.limits.connection != applied.config.limits.connection
        {
            needs_restart.push(
                "limits: max_request_size and the connection limits apply after a restart"
                    .to_string(),
            );
        }
        if config.listen.grpc != applied.config.listen.grpc {
            needs_restart.push(format!(
                "listen: the gateway keeps serving on {}; restart it to move to {}",
                applied.config.listen.grpc, config.listen.grpc
            ));
        }
        if config.listen.http != applied.config.listen.http
            || config.listen.metrics != applied.config.listen.metrics
        {
            needs_restart.push(
                "listen: the HTTP and admin listeners stay as they are until a restart".to_string(),
            );
        }
        if config.shutdown_grace != applied.config.shutdown_grace {
            needs_restart.push("shutdown_grace: applies after a restart".to_string());
        }
        if config.state != applied.config.state {
            needs_restart.push(
                "state: the gateway keeps its connection to the shared store (and the counts \
                 in it) until a restart"
                    .to_string(),
            );
        }
        if config.cors != applied.config.cors {
            needs_restart.push("cors: applies after a restart".to_string());
        }
        let table = Arc::new(table);
        self.table.store(table.clone());
        // Calls take the table from the policy they are pinned to (see
        // `stack::guard::pin`), so a call sees this table only with these
        // keys and limits, whichever it loads first.
        if let Some(guard) = &self.guard {
            let policy = Guard::build(&config, Some(&guard.load())).serving(&table);
            guard.store(Arc::new(policy));
        }
        if let Some(shared) = &self.shared {
            shared.apply(&config);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::config_reload(true);
        metrics::config_generation(generation);
        for note in &needs_restart {
            tracing::warn!(file = %source, "{note}");
        }
        tracing::info!(
            file = %source,
            %trigger,
            generation,
            routes = config.routes.len(),
            upstreams = config.upstreams.len(),
            "routing table reloaded"
        );
        applied.config = config;
        applied.text = Some(text);
        ReloadOutcome::Applied {
            generation,
            needs_restart,
        }
    }

    fn reject(&self, err: ConfigError, trigger: &str) -> ReloadOutcome {
        metrics::config_reload(false);
        tracing::error!(
            %trigger,
            "routing file rejected; the table in force stays:\n{err}"
        );
        ReloadOutcome::Rejected(err)
    }

    /// Reloads whenever the routing file's directory changes, until the
    /// returned guard is dropped. The directory, not the file, is watched:
    /// editors replace the file by renaming, and Kubernetes swaps a symlink
    /// to a new directory, and both leave a watch on the old file blind.
    pub(crate) fn watch(self: &Arc<Self>) -> Result<impl Drop + Send + use<>, notify::Error> {
        use notify::Watcher;

        let file = self
            .path
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default();
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let _ = tx.send(event);
            })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let reloader = self.clone();
        let task = tokio::spawn(async move {
            // Owned by the task, so the watch lasts as long as it does.
            let _watcher = watcher;
            while let Some(event) = events.recv().await {
                match event {
                    Ok(event) if !may_change(&event, &file) => continue,
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "file watcher error"),
                }
                // Wait for the burst of events one change makes to settle.
                loop {
                    match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                        Ok(Some(_)) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                reloader.reload("file change").await;
            }
        });
        Ok(AbortOnDrop(task))
    }

    /// Reloads on every SIGHUP until the returned guard is dropped.
    #[cfg(unix)]
    pub(crate) fn reload_on_sighup(self: &Arc<Self>) -> std::io::Result<impl Drop + Send + use<>> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let reloader = self.clone();
        Ok(AbortOnDrop(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                reloader.reload("SIGHUP").await;
            }
        })))
    }
}

/// Whether a file event in the routing file's directory may have changed
/// the routing file, named `file` there.
///
/// Reading a file is an event too (inotify reports opens and closes), and
/// the reload's own read of the routing file must not start the next
/// reload: that made a watched gateway read its file ten times a second,
/// forever. Closing a file written to still counts: it ends an in-place
/// save. Other files in the directory (a log kept beside the routing file,
/// an editor's swap file) do not count; the rename that ends an editor's
/// save names the routing file, and a mounted ConfigMap is updated by
/// swapping its `..data` link, which counts. An event that names no file
/// counts.
fn may_change(event: &notify::Event, file: &OsStr) -> bool {
    use notify::event::{AccessKind, AccessMode};
    let writes = match event.kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    };
    let concerns = |path: &PathBuf| {
        path.file_name()
            .is_some_and(|name| name == file || name.as_encoded_bytes().starts_with(b".."))
    };
    writes && (event.paths.is_empty() || event.paths.iter().any(concerns))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::path::PathBuf;

    use notify::event::RenameMode;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind};
    use notify::{Event, EventKind};

    use super::may_change;

    /// `kind` on `name` in the routing file's directory.
    fn event(kind: EventKind, name: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from("/etc/llmgate").join(name))
    }

    /// Whether `kind` on `name` counts for the routing file `routing.yaml`.
    fn counts(kind: EventKind, name: &str) -> bool {
        may_change(&event(kind, name), OsStr::new("routing.yaml"))
    }

    #[test]
    fn reading_the_routing_file_does_not_count_as_a_change() {
        for access in [
            AccessKind::Open(AccessMode::Read),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
            AccessKind::Any,
        ] {
            assert!(!counts(EventKind::Access(access), "routing.yaml"));
        }
    }

    #[test]
    fn writes_renames_and_removals_of_the_routing_file_count_as_changes() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Any,
        ] {
            assert!(counts(kind, "routing.yaml"), "{kind:?}");
        }
    }

    #[test]
    fn other_files_in_the_directory_do_not_count_but_a_configmap_swap_does() {
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        assert!(!counts(write, "gateway.log"));
        assert!(!counts(write, ".routing.yaml.swp"));
        assert!(counts(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "..data"
        ));
        assert!(counts(
            EventKind::Create(CreateKind::Folder),
            "..2026_12_02_14_30_00.123"
        ));
        assert!(
            may_change(&Event::new(write), OsStr::new("routing.yaml")),
            "no path named"
        );
    }
}
