//! The daemon's assembly: open the engine, bind the local API listeners, serve until shutdown.
use std::future::Future;
use std::sync::Arc;

use thiserror::Error;

use crate::api::{self, ApiOptions, Listeners};
use crate::config::DaemonConfig;
use crate::devices::hub::Hub;
use crate::devices::Classifier;
use crate::engine::{Engine, EngineConfig, EngineError, SystemClock};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("local API: {0}")]
    Api(#[from] api::ApiError),
    #[error("{0}")]
    Bind(String),
    #[error(transparent)]
    Callbacks(#[from] api::callbacks::CallbackListenerError),
}

/// Bind every listener first (so a port clash fails fast), open the engine, then serve.
pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), DaemonError> {
    let unix = match &cfg.unix_socket {
        Some(p) => Some(api::bind_local(p)?),
        None => None,
    };
    let tcp = match cfg.tcp {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| DaemonError::Bind(format!("{a}: {e}")))?),
        None => None,
    };
    // The vendors' callback listener (off unless `[callbacks]` is configured), bound before anything starts.
    let callbacks = match &cfg.callbacks {
        Some(c) => Some((api::callbacks::bind(c).await?, api::callbacks::Limits::of(c))),
        None => None,
    };
    // Owner-only before the journal makes anything inside (sled's files take the umask's modes).
    for dir in [cfg.data_dir.clone(), cfg.data_dir.join("journal")] {
        match crate::fsmode::private_dir(&dir) {
            Ok(Some(old)) => tracing::warn!(dir = %dir.display(), old = format!("{old:04o}"), "the data folder was open to other users; made it 0700"),
            Ok(None) => {}
            Err(e) => return Err(DaemonError::Bind(format!("data folder {}: {e}", dir.display()))),
        }
    }
    let engine = Engine::open(EngineConfig { data_dir: cfg.data_dir.clone(), profiles: cfg.profiles.clone() }, Arc::new(SystemClock)).await?;
    // Settled batches older than `[journal] retain_days` move to the day files: now, then daily.
    engine.start_retention(cfg.journal.retain_days);
    match crate::fsmode::restrict_tree(&cfg.data_dir) {
        Ok(changed) if !changed.is_empty() => {
            tracing::warn!(files = changed.len(), first = %changed[0].display(), "files in the data folder were readable by others; made them owner-only")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(dir = %cfg.data_dir.display(), error = %e, "cannot make the data folder's files owner-only"),
    }
    let rules = cfg.profiles.iter().flat_map(|p| p.scan_rules.iter().cloned());
    let classifier = Classifier::new(rules).map_err(|e| DaemonError::Bind(format!("scan rules: {e}")))?;
    let hub = Hub::new(classifier, engine.clock(), engine.event_sender());
    let (stop_devices, devices_stop) = tokio::sync::watch::channel(false);
    hub.start(cfg.devices.clone(), devices_stop);
    engine.attach_devices(hub);
    tracing::info!(profiles = cfg.profiles.len(), socket = ?cfg.unix_socket, tcp = ?cfg.tcp, "posgate ready");
    // Journal open, every listener bound: a connection made from now on is answered (`Type=notify`).
    #[cfg(unix)]
    tell_manager(crate::notify::State::Ready, &format!("ready: {} profile(s)", cfg.profiles.len()));
    let opts = ApiOptions {
        token: cfg.token.clone(),
        max_body_bytes: cfg.max_body_bytes,
        allowed_origins: cfg.allowed_origins.clone(),
        limits: cfg.api,
        config_file: cfg.source.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let callback_task =
        callbacks.map(|((listener, tls), limits)| tokio::spawn(api::callbacks::serve(engine.clone(), listener, tls, limits, stopped(stop_rx.clone()))));
    let relay = tokio::spawn(async move {
        shutdown.await;
        #[cfg(unix)]
        tell_manager(crate::notify::State::Stopping, "stopping: finishing requests in flight");
        let _ = stop_tx.send(true);
    });
    let result = api::serve(engine.clone() as Arc<dyn api::Service>, Listeners { unix, tcp }, opts, stopped(stop_rx)).await;
    // Dropping the relay drops the stop sender: the callback listener stops too (it drains its own).
    relay.abort();
    let _ = relay.await;
    if let Some(t) = callback_task {
        let _ = t.await;
    }
    let _ = stop_devices.send(true);
    engine.shutdown().await;
    if let Some(p) = &cfg.unix_socket {
        api::remove_local(p);
    }
    result.map_err(DaemonError::from)
}

/// Tell systemd (when it started us with `Type=notify`) how the daemon stands; a failure is logged, never fatal:
/// the daemon serves either way, and systemd times the start out on its own if `READY=1` never arrives.
#[cfg(unix)]
fn tell_manager(state: crate::notify::State, status: &str) {
    if let Err(e) = crate::notify::notify(state, status) {
        tracing::warn!("service manager not told {state:?}: {e}");
    }
}

/// Resolves on SIGTERM or Ctrl-C (Ctrl-Break on Windows; the Windows service stops through the SCM).
pub async fn shutdown_signal() {
    crate::platform::terminate_signal().await;
    tracing::info!("shutting down");
}
