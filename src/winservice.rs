//! The Windows service: `posgate service run` hands the process to the service control manager (SCM),
//! which calls `service_main`; the SCM's stop and shutdown controls complete the daemon's shutdown future.
//!
//! The MSI installs the service (name [`SERVICE_NAME`], command line `posgate.exe service run --config
//! …`) and then runs [`setup`] (`posgate service setup`) for what wixl cannot express: the config
//! folder and the service's recovery actions.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use thiserror::Error;
use windows_service::service::{ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle};
use windows_service::{define_windows_service, service_dispatcher};

/// The service's name in the SCM (`sc query posgate`), as the MSI's `ServiceInstall` names it.
pub const SERVICE_NAME: &str = "posgate";
/// Exit code (service-specific) when the config does not load: the SCM logs it, recovery restarts.
pub const EXIT_CONFIG: u32 = 2;
/// Exit code (service-specific) when the daemon stopped with an error.
pub const EXIT_DAEMON: u32 = 1;
/// The service log is started afresh (the old one kept as `posgate.log.1`) above this size.
pub const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("`posgate service run` is started by the Windows service control manager (run `posgate serve` in a console instead): {0}")]
    Dispatcher(windows_service::Error),
    #[error("the service was already started in this process")]
    Twice,
    #[error("service log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("setting up {path}: {source}")]
    Setup { path: PathBuf, source: std::io::Error },
    #[error("the service control manager refused: {0}")]
    Scm(windows_service::Error),
}

/// Restart after 5 s, then 30 s, then every 60 s; the count resets after a day without failures.
pub const RECOVERY_DELAYS: [Duration; 3] = [Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(60)];
pub const RECOVERY_RESET: Duration = Duration::from_secs(24 * 3600);

/// The MSI's setup step, run as SYSTEM once the service exists: write the config from the template
/// unless one is there (with the `data` and `terminal-profiles` folders), and give the service its
/// recovery actions, also for a non-zero exit (a daemon that stops with an error is restarted too).
pub fn setup(config: &Path) -> Result<(), ServiceError> {
    use windows_service::service::{ServiceAccess, ServiceAction, ServiceActionType, ServiceFailureActions, ServiceFailureResetPeriod};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    crate::platform::ensure_config(config, crate::platform::WINDOWS_CONFIG_TEMPLATE)
        .map_err(|source| ServiceError::Setup { path: config.to_path_buf(), source })?;
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT).map_err(ServiceError::Scm)?;
    let service = manager.open_service(SERVICE_NAME, ServiceAccess::CHANGE_CONFIG).map_err(ServiceError::Scm)?;
    let actions = RECOVERY_DELAYS.iter().map(|&delay| ServiceAction { action_type: ServiceActionType::Restart, delay }).collect();
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(RECOVERY_RESET),
            reboot_msg: None,
            command: None,
            actions: Some(actions),
        })
        .map_err(ServiceError::Scm)?;
    service.set_failure_actions_on_non_crash_failures(true).map_err(ServiceError::Scm)
}

/// What `service_main` needs, handed over before the dispatcher starts (the SCM calls it with no context).
struct Start {
    config: PathBuf,
    runtime: tokio::runtime::Handle,
}

static START: OnceLock<Start> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Connect to the SCM and run the service until it stops. Blocks the calling thread: call it from
/// `spawn_blocking`, never on a runtime worker, since `service_main` drives the daemon on `runtime`.
pub fn run(config: PathBuf, runtime: tokio::runtime::Handle) -> Result<(), ServiceError> {
    START.set(Start { config, runtime }).map_err(|_| ServiceError::Twice)?;
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(ServiceError::Dispatcher)
}

/// The service's log file, next to its config (`%ProgramData%\posgate\posgate.log`): a service has no
/// console. Started afresh above [`LOG_ROTATE_BYTES`], so it never fills the disk.
pub fn open_log(config: &Path) -> Result<std::fs::File, ServiceError> {
    let path = config.parent().unwrap_or(Path::new(".")).join("posgate.log");
    let err = |source| ServiceError::Log { path: path.clone(), source };
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        std::fs::rename(&path, path.with_extension("log.1")).map_err(err)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(err)
}

fn report(status: ServiceStatusHandle, state: ServiceState, exit: ServiceExitCode, wait_hint: Duration) {
    let controls_accepted = match state {
        ServiceState::Running => ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        _ => ServiceControlAccept::empty(),
    };
    let s = ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code: exit,
        checkpoint: 0,
        wait_hint,
        process_id: None,
    };
    if let Err(e) = status.set_service_status(s) {
        tracing::warn!(error = %e, ?state, "cannot report the service state to the SCM");
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(start) = START.get() else {
        return;
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            let _ = stop_tx.send(true);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = match service_control_handler::register(SERVICE_NAME, handler) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot register with the service control manager");
            return;
        }
    };
    report(status, ServiceState::StartPending, ServiceExitCode::NO_ERROR, Duration::from_secs(60));
    let cfg = match crate::backend::registry::load_config(&start.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the service's config does not load");
            report(status, ServiceState::Stopped, ServiceExitCode::ServiceSpecific(EXIT_CONFIG), Duration::ZERO);
            return;
        }
    };
    // Listeners bind and the journal opens within `daemon::run`; a failure there stops the service
    // with an exit code, which the SCM's recovery actions answer with a restart.
    report(status, ServiceState::Running, ServiceExitCode::NO_ERROR, Duration::ZERO);
    let shutdown = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
        tracing::info!("the service control manager asked posgate to stop");
        report(status, ServiceState::StopPending, ServiceExitCode::NO_ERROR, crate::api::server::SHUTDOWN_GRACE + Duration::from_secs(10));
    };
    let exit = match start.runtime.block_on(crate::daemon::run(cfg, shutdown)) {
        Ok(()) => ServiceExitCode::NO_ERROR,
        Err(e) => {
            tracing::error!(error = %e, "the daemon stopped with an error");
            ServiceExitCode::ServiceSpecific(EXIT_DAEMON)
        }
    };
    report(status, ServiceState::Stopped, exit, Duration::ZERO);
}
