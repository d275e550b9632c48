//! The clap definitions of the `posgate` command line (raw flags; validation happens in config).
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "posgate",
    version,
    about = "Counter devices, a local POS API and a crash-proof journal in front of vendor backends",
    after_help = crate::client::exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where client subcommands look for the daemon unless told (`posgate doctor` asks its config instead).
pub const DEFAULT_SOCKET: &str = crate::platform::DEFAULT_LOCAL_ENDPOINT;

/// How a client subcommand reaches the daemon.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    /// The daemon's Unix socket (its named pipe on Windows).
    #[arg(long, env = "POSGATE_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Use the loopback TCP listener instead of the socket.
    #[arg(long, env = "POSGATE_TCP", global = true)]
    pub tcp: Option<SocketAddr>,
    /// File holding the bearer token for --tcp.
    #[arg(long, env = "POSGATE_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (systemd / Windows service).
    Serve {
        #[arg(long, default_value = crate::platform::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The Windows service: `service run` is what the service control manager starts (the MSI installs it).
    #[cfg(windows)]
    #[command(subcommand)]
    Service(ServiceAction),
    /// Run the daemon with the built-in simulators and the example profiles.
    Demo(DemoArgs),
    /// List the backend kinds this build knows (the profile's `backend =`), their documents and example profiles.
    Backends,
    /// Show version, profiles (batch, trace, online, pending recovery) and devices.
    Status {
        #[command(flatten)]
        connect: Connect,
    },
    /// Sign a terminal on (gets a batch number and working keys).
    #[command(after_help = crate::client::exit::HELP)]
    Checkin {
        profile: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Settle a terminal's open batch, or with `--batch N` an earlier batch that `posgate status` lists
    /// as unsettled.
    #[command(after_help = crate::client::exit::HELP)]
    Settle {
        profile: String,
        /// An earlier batch listed as unsettled (`unsettled_batches` in `posgate status`).
        #[arg(long)]
        batch: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Run any operation with a JSON body (vendor field names, money in fen); the exit code says
    /// how it ended (approved, declined, outcome unknown, not done).
    #[command(after_help = crate::client::exit::HELP)]
    Run {
        profile: String,
        operation: String,
        /// The JSON body.
        #[arg(long, default_value = "{}")]
        body: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Long jobs (wallet delivery): `jobs resume ID` resumes a paused one and prints its progress.
    /// (Interrupted jobs also resume by themselves when the daemon starts.)
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Run a report operation (lottery `reconcile`, `report-sales`, …) and print its text rendering.
    Report {
        profile: String,
        operation: String,
        /// The JSON body (for example `{"date": "2026-11-22"}` or `{"beginDate": …}`).
        #[arg(long, default_value = "{}")]
        body: String,
        /// Print the whole JSON answer instead of the text rendering.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// List journal records, or show one by id; `journal verify` checks a journal offline.
    #[command(args_conflicts_with_subcommands = true)]
    Journal {
        #[command(subcommand)]
        action: Option<JournalAction>,
        id: Option<u64>,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        batch: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// YYYY-MM-DD
        #[arg(long)]
        date: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        connect: Connect,
    },
    /// List owed and parked recovery entries; `--retry ID` re-queues a parked one;
    /// `--resolve ID --outcome approved|reversed` records what the vendor confirmed.
    Reversals {
        #[arg(long, conflicts_with = "resolve")]
        retry: Option<u64>,
        #[arg(long, requires = "outcome")]
        resolve: Option<u64>,
        #[arg(long, value_parser = ["approved", "reversed"])]
        outcome: Option<String>,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Check the config, secrets, backends (TLS handshake), serial ports and the running daemon.
    Doctor {
        #[arg(long, default_value = crate::platform::DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
    /// Measure consume latency and throughput against the built-in simulator.
    Bench(BenchArgs),
    /// Print the man page (roff), generated from these definitions.
    Man,
    /// Print shell completions, generated from these definitions.
    Completions { shell: clap_complete::Shell },
}

/// `posgate journal <action>`: work on the journal files themselves, without the daemon.
#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Check a journal offline (never writes to it): its high-water mark, that every record decodes,
    /// that the indexes point at existing records, that batch totals equal the sums of their approved
    /// records, and that the data key opens the sealed fields. Exits non-zero on a problem.
    Verify {
        /// The data directory (holding `journal/`, `journal.hwm`, `journal.key`).
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        /// Or the daemon config whose `data_dir` to check.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write the records created from `--from` to `--to` (UTC dates, inclusive), in the hot journal or
    /// archived, each once and oldest first, to stdout for the shop's accounts: money as integer fen,
    /// cards masked as journaled, a header row (CSV).
    Export {
        /// First date, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last date, YYYY-MM-DD.
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl"])]
        format: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its journal, keys, certificates and profiles.
    #[arg(long, default_value = "posgate-demo")]
    pub data_dir: PathBuf,
    /// Unix socket for the local API (default: DATA_DIR/posgate.sock).
    #[arg(long)]
    pub unix_socket: Option<PathBuf>,
    /// Loopback TCP address for the local API (token printed at start).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub tcp: SocketAddr,
    /// Also run a pseudo-terminal scanner that sends a barcode, a QR code and a card swipe every 15 s.
    #[arg(long)]
    pub scanner: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Consumes for the latency run (one lane).
    #[arg(long, default_value_t = 2000)]
    pub latency_ops: usize,
    /// Consumes for the throughput run.
    #[arg(long, default_value_t = 20000)]
    pub throughput_ops: usize,
    /// Concurrent lanes for the throughput run.
    #[arg(long, default_value_t = 32)]
    pub lanes: usize,
    /// Scratch folder (default: a fresh one under the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Frames for the scan benchmark (pty bytes to the `scan` event at an SSE subscriber).
    #[arg(long, default_value_t = 2000)]
    pub scan_frames: usize,
    /// Records in the journal for the start-up and journal measurements.
    #[arg(long, alias = "records", default_value_t = 1_000_000)]
    pub startup_records: usize,
    /// `--only journal`: reuse a filled journal. When DIR holds one (`journal/`, `journal.hwm`, made by an
    /// earlier run with the same `--records`), each run copies it instead of filling; otherwise the run fills
    /// one and keeps a copy in DIR for the next runs.
    #[arg(long)]
    pub journal_template: Option<PathBuf>,
    /// Run only this part: binary, consume, scan, startup, journal, or all.
    #[arg(long, default_value = "all")]
    pub only: String,
    /// The binary whose stripped size to report (default: target/dist/posgate when present, the shipped
    /// build; else this executable).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

/// `posgate jobs <action>`.
#[derive(Debug, clap::Subcommand)]
pub enum JobsAction {
    /// Resume a paused job where its journal says, and print its progress until it ends.
    Resume {
        /// The job's journal id.
        id: u64,
        #[command(flatten)]
        connect: Connect,
    },
}

/// `posgate service …` (Windows only).
#[cfg(windows)]
#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Run as the Windows service `posgate`; only the service control manager starts this.
    Run {
        #[arg(long, default_value = crate::platform::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The MSI's setup step (as SYSTEM): write the config unless present, make its folders, set the
    /// service's recovery actions.
    Setup {
        #[arg(long, default_value = crate::platform::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}
