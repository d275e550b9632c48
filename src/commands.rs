//! What each `posgate` subcommand does; the only place that uses `anyhow`.
use anyhow::{bail, Context};
use serde_json::{json, Value};

use posgate::cli::{Cli, Command, Connect, DemoArgs, JournalAction};
use posgate::client::{exit, ApiClient, ClientError};
use posgate::config::DaemonConfig;

/// The log filter from the first of `vars` that is set and parses, else `info`. The syntax is a list of
/// `target=level` and bare `level` directives (`posgate::devices=trace,warn`): `filter::Targets`, not
/// `EnvFilter`, whose span and field directives nobody here used and whose regex engine cost the shipped
/// binary its size.
fn log_filter(vars: &[&str]) -> tracing_subscriber::filter::Targets {
    vars.iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO))
}

/// Logging to stderr. The filter: `POSGATE_LOG` when set, else `RUST_LOG`, else `info`. Under systemd
/// (`JOURNAL_STREAM` or `INVOCATION_ID` set) lines are plain, with no timestamp and no colour: the
/// journal stamps each line itself.
fn init_logging() {
    let filter = log_filter(&["POSGATE_LOG", "RUST_LOG"]);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    let ansi = !journald && std::io::IsTerminal::is_terminal(&std::io::stderr());
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let stderr = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    // The technician page's log tail: the same lines, kept in a small bounded ring.
    use posgate::api::page::logring;
    let _ = if journald {
        tracing_subscriber::registry().with(filter).with(stderr.without_time()).with(logring::layer()).try_init()
    } else {
        tracing_subscriber::registry().with(filter).with(stderr).with(logring::layer()).try_init()
    };
}

fn client(c: &Connect) -> anyhow::Result<ApiClient> {
    match c.tcp {
        Some(addr) => {
            let path = c.token_file.as_ref().context("--tcp needs --token-file")?;
            let token = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(ApiClient::tcp(addr.to_string(), Some(posgate::secret::Secret::new(token.trim().as_bytes().to_vec()))))
        }
        None => Ok(ApiClient::unix(&c.socket)),
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// Print the answer; exit non-zero when the daemon answered with an error.
fn finish(status: u16, body: Value) -> anyhow::Result<()> {
    print(&body);
    if status >= 400 {
        bail!("the daemon answered HTTP {status}");
    }
    Ok(())
}

/// Print an operation's answer (or why there is none) and give its documented exit code ([`exit`]).
fn finish_op(r: Result<(u16, Value), ClientError>) -> u8 {
    match r {
        Ok((status, body)) => {
            print(&body);
            exit::for_answer(status, &body)
        }
        Err(e) => {
            eprintln!("Error: {e}");
            e.exit_code()
        }
    }
}

/// Run a subcommand; `Ok(code)` is the process exit code (0 unless an operation says otherwise).
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Checkin { profile, connect } => Ok(finish_op(client(&connect)?.post(&format!("/v1/profiles/{profile}/checkin"), json!({}), None).await)),
        Command::Settle { profile, batch, connect } => {
            let body = match batch {
                Some(b) => json!({ "batch": b }),
                None => json!({}),
            };
            Ok(finish_op(client(&connect)?.post(&format!("/v1/profiles/{profile}/settle"), body, None).await))
        }
        Command::Run { profile, operation, body, idempotency_key, connect } => {
            // `--body @file`: a large body (a POSP delivery file) from a file.
            let body = match body.strip_prefix('@') {
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("Error: --body {body}: {e}");
                        return Ok(exit::USAGE);
                    }
                },
                None => body,
            };
            let body: Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("Error: --body is not JSON: {e}");
                    return Ok(exit::USAGE);
                }
            };
            let c = client(&connect)?;
            let r = c.post(&format!("/v1/profiles/{profile}/{operation}"), body, idempotency_key.as_deref()).await;
            match r {
                // A long job (wallet delivery): print its progress until it ends.
                Ok((s, v)) if s < 400 && v.get("chunks_total").is_some() && v["status"] == "pending" => follow_job(&c, v).await,
                r => Ok(finish_op(r)),
            }
        }
        Command::Jobs { action: posgate::cli::JobsAction::Resume { id, connect } } => {
            let c = client(&connect)?;
            match c.post(&format!("/v1/jobs/{id}/resume"), json!({}), None).await {
                Ok((s, v)) if s < 400 => follow_job(&c, v).await,
                r => Ok(finish_op(r)),
            }
        }
        other => run_other(other).await.map(|()| 0),
    }
}

async fn run_other(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Checkin { .. } | Command::Settle { .. } | Command::Run { .. } | Command::Jobs { .. } => unreachable!("handled by run"),
        Command::Serve { config } => {
            init_logging();
            let cfg = posgate::backend::registry::load_config(&config)?;
            posgate::daemon::run(cfg, posgate::daemon::shutdown_signal()).await?;
            Ok(())
        }
        #[cfg(windows)]
        Command::Service(posgate::cli::ServiceAction::Run { config }) => {
            // No console: the log goes to a file next to the config.
            let log = posgate::winservice::open_log(&config)?;
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let filter = log_filter(&["POSGATE_LOG"]);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::sync::Mutex::new(log)))
                .try_init();
            let rt = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || posgate::winservice::run(config, rt)).await??;
            Ok(())
        }
        #[cfg(windows)]
        Command::Service(posgate::cli::ServiceAction::Setup { config }) => {
            posgate::winservice::setup(&config)?;
            println!("service {} set up with {}", posgate::winservice::SERVICE_NAME, config.display());
            Ok(())
        }
        Command::Demo(args) => demo(args).await,
        Command::Backends => {
            print!("{}", posgate::backend::registry::markdown());
            Ok(())
        }
        Command::Status { connect } => {
            let (s, v) = client(&connect)?.get("/v1/status").await?;
            // A profile's warnings (plain HTTP, …) go to stderr as well, where a person sees them.
            for w in v["profiles"].as_array().into_iter().flatten().flat_map(|p| p["warnings"].as_array().into_iter().flatten()) {
                eprintln!("WARN {}", w.as_str().unwrap_or_default());
            }
            if v["journal"]["state"] == "unavailable" {
                eprintln!("WARN {}", v["journal"]["error"].as_str().unwrap_or("journal unavailable"));
            }
            finish(s, v)
        }
        Command::Report { profile, operation, body, json, connect } => {
            let body: Value = serde_json::from_str(&body).context("--body is not JSON")?;
            let (s, v) = client(&connect)?.post(&format!("/v1/profiles/{profile}/{operation}"), body, None).await?;
            let unbalanced = v["result"]["balanced"] == Value::Bool(false);
            match v["result"]["report_text"].as_str() {
                Some(text) if !json && s < 400 => println!("{text}"),
                _ => finish(s, v.clone())?,
            }
            // A reconciliation that does not balance is a failure for scripts and cron.
            if unbalanced {
                bail!("{operation} of {profile}: not balanced ({} difference(s))", v["result"]["differences"]);
            }
            if s >= 400 || v["status"] == "failed" {
                bail!("{operation} of {profile} failed: {}", v["error"].as_str().unwrap_or("see above"));
            }
            Ok(())
        }
        Command::Journal { action: Some(JournalAction::Verify { data_dir, config }), .. } => {
            let data_dir = match (data_dir, config) {
                (Some(d), _) => d,
                (None, Some(c)) => DaemonConfig::load(&c)?.data_dir,
                (None, None) => bail!("give --data-dir DIR or --config FILE"),
            };
            println!("verifying the journal in {}", data_dir.display());
            let report = posgate::journal::verify::verify(&data_dir, None);
            print!("{}", report.render());
            if !report.ok() {
                bail!("the journal in {} has problems", data_dir.display());
            }
            Ok(())
        }
        Command::Journal { action: Some(JournalAction::Export { from, to, format }), connect, .. } => export(&client(&connect)?, &from, &to, &format).await,
        Command::Journal { action: None, id, profile, batch, status, date, limit, connect } => {
            let c = client(&connect)?;
            let (s, v) = match id {
                Some(id) => c.get(&format!("/v1/journal/{id}")).await?,
                None => {
                    let mut q = form_urlencoded::Serializer::new(String::new());
                    for (k, v) in [("profile", profile), ("batch", batch), ("status", status), ("date", date)] {
                        if let Some(v) = v {
                            q.append_pair(k, &v);
                        }
                    }
                    q.append_pair("limit", &limit.to_string());
                    c.get(&format!("/v1/journal?{}", q.finish())).await?
                }
            };
            finish(s, v)
        }
        Command::Reversals { retry, resolve, outcome, note, connect } => {
            let c = client(&connect)?;
            let (s, v) = match (retry, resolve) {
                (Some(id), _) => c.post(&format!("/v1/reversals/{id}/retry"), json!({}), None).await?,
                (None, Some(id)) => c.post(&format!("/v1/reversals/{id}/resolve"), json!({"outcome": outcome, "note": note}), None).await?,
                (None, None) => c.get("/v1/reversals").await?,
            };
            finish(s, v)
        }
        Command::Doctor { config, connect } => {
            // The config's own socket unless one was named (flag or POSGATE_SOCKET, or --tcp).
            let named =
                connect.tcp.is_some() || std::env::var_os("POSGATE_SOCKET").is_some() || connect.socket != std::path::Path::new(posgate::cli::DEFAULT_SOCKET);
            let given = if named { Some(client(&connect)?) } else { None };
            let report = posgate::doctor::run(&config, given.as_ref()).await;
            print!("{}", report.render());
            if report.failed() {
                bail!("doctor found problems");
            }
            Ok(())
        }
        Command::Man => {
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match man.render(&mut std::io::stdout()) {
                // `posgate man | head` closes the pipe early: not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => Ok(r?),
            }
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "posgate", &mut std::io::stdout());
            Ok(())
        }
        Command::Bench(args) => {
            posgate::bench::run(args).await?;
            Ok(())
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    init_logging();
    let mut setup = posgate::demo::prepare(&args.data_dir, args.unix_socket.clone(), Some(args.tcp)).await.map_err(anyhow::Error::msg)?;
    if args.scanner {
        let path = posgate::demo::spawn_scanner(std::time::Duration::from_secs(15)).map_err(anyhow::Error::msg)?;
        let mut dev = posgate::devices::DeviceConfig::for_path(path.clone());
        dev.id = Some("demo-scanner".into());
        setup.config.devices.push(dev);
        println!(
            "  demo scanner on {path}: watch it with  curl -N --unix-socket {} http://posgate/v1/events",
            setup.config.unix_socket.clone().unwrap_or_default().display()
        );
    }
    let sock = setup.config.unix_socket.clone().unwrap_or_default();
    println!(
        "posgate demo: loyalty simulator on https://{}, lottery simulator on https://{} (test CA in {})",
        setup.loyalty_addr,
        setup.lottery_addr,
        setup.config.data_dir.join("pki").display()
    );
    println!("  local API, Unix socket: {}", sock.display());
    println!(
        "  daemon config:          {} (check it while the demo runs:  posgate doctor --config {})",
        setup.config_file.display(),
        setup.config_file.display()
    );
    println!("    the daemon alone on it, without the simulators:  posgate serve --config {}", setup.config_file.display());
    println!("  local API, TCP:         http://{}  (Authorization: Bearer {})", args.tcp, setup.token);
    println!("  demo cards: 6222021234567890123 (PIN 123456), 6222020000000000016 (no PIN, 200.00), 6222020000000000008 (no PIN, large balance)");
    println!("  try:");
    println!("    curl --unix-socket {} http://posgate/v1/status", sock.display());
    println!(
        "    curl --unix-socket {} -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' -d '{{\"cardNo\":\"6222020000000000008\",\"consumeType\":\"01\",\"pointAmount\":1050,\"cashAmount\":0}}' http://posgate/v1/profiles/loyalty/consume",
        sock.display()
    );
    println!(
        "    curl --unix-socket {} -H 'Content-Type: application/json' -d '{{\"userId\":\"wx0001\",\"userRealIp\":\"127.0.0.1\",\"barCode\":\"GW00000003\"}}' http://posgate/v1/profiles/lottery/redeem",
        sock.display()
    );
    println!("    POSGATE_SOCKET={} posgate journal", sock.display());
    println!("  wallet simulator on https://{} (account 13912345678, payment code 123456):", setup.wallet_addr);
    println!("    export POSGATE_SOCKET={}", sock.display());
    println!("    posgate run wallet pay --body '{{\"consumerId\":\"13912345678\",\"paymentCode\":\"123456\",\"sum\":5000}}'");
    println!("    posgate run wallet pay-cancel --body '{{\"original\": <the pay's id>}}'");
    println!(
        "    posgate run wallet delivery --body @{}   ({} orders: 3 requests, progress shown)",
        setup.delivery_file.display(),
        posgate::demo::DEMO_DELIVERY_ORDERS
    );
    println!("  scenic ticket platform on https://{} (products XXX, and REAL with one resident ID a ticket):", setup.scenic_addr);
    println!("    posgate run scenic create-order --body '{{\"product_code\":\"XXX\",\"take_phone\":\"13456451211\",\"date\":\"2030-04-01\",\"price\":600,\"amount\":1200,\"count\":2}}'");
    println!("  callback listener on http://{} (scenic check-ins and consignment results arrive there; watch them as events):", setup.callback_addr);
    println!("    curl -N --unix-socket {} http://posgate/v1/events", sock.display());
    println!("    a few seconds after a scenic order is created, the demo gate checks one of its tickets in: a `notification` event, and `posgate journal` shows the counts");
    println!("  consignment platform on http://{} (finishes a card after 2 s and posts its result to the listener):", setup.consign_addr);
    println!("    posgate run consign submit --body '{{\"productCode\":\"JD100\",\"cardNumber\":\"6222021234567890123\",\"cardPassword\":\"Card-Secret-777123\",\"faceMoney\":10000}}'");
    println!("    posgate journal   (the order ends final once its notification is journaled)");
    posgate::demo::spawn_gate(setup.scenic.clone(), std::time::Duration::from_secs(3));
    posgate::daemon::run(setup.config, posgate::daemon::shutdown_signal()).await?;
    Ok(())
}

/// One progress line of a job.
fn job_line(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    format!(
        "job {}: {} {} steps {}/{} chunks {}/{} accepted {}/{} failures {} unmatched {}{}",
        n("id"),
        v["state"].as_str().unwrap_or("?"),
        v["phase"].as_str().unwrap_or(""),
        n("steps_done"),
        n("steps_total"),
        n("chunks_done"),
        n("chunks_total"),
        n("accepted"),
        n("items_total"),
        n("failures"),
        n("unmatched"),
        v["error"].as_str().map(|e| format!(" ({e})")).unwrap_or_default()
    )
}

/// Print a job's progress lines until it ends or pauses; then its record (failures, unmatched parts).
async fn follow_job(c: &ApiClient, first: Value) -> anyhow::Result<u8> {
    let id = first["id"].as_u64().context("the job's answer has no id")?;
    let mut last = String::new();
    loop {
        let (s, rec) = c.get(&format!("/v1/journal/{id}")).await?;
        if s >= 400 {
            return Ok(finish_op(Ok((s, rec))));
        }
        let r = &rec["result"];
        let failures = r["failures"].as_array().map(Vec::len).unwrap_or(0);
        let unmatched = r["report"]["unmatched"].as_array().map(Vec::len).unwrap_or(0);
        let v = json!({"id": id, "state": r["state"], "phase": r["phase"], "steps_done": r["steps_done"], "steps_total": r["steps_total"],
            "chunks_done": r["chunks_done"], "chunks_total": r["chunks_total"], "accepted": r["accepted"], "items_total": r["items_total"],
            "failures": failures, "unmatched": unmatched, "error": r["error"]});
        let line = job_line(&v);
        if line != last {
            println!("{line}");
            last = line;
        }
        let state = r["state"].as_str().unwrap_or_default();
        if rec["status"] != "pending" || state == "paused" {
            print(&json!({"id": id, "status": rec["status"], "state": state, "failures": r["failures"], "report": r["report"], "error": rec["error"]}));
            return Ok(if rec["status"] == "approved" && failures == 0 && unmatched == 0 { 0 } else { exit::for_answer(202, &json!({"status": "pending"})) });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `posgate journal export`: page through `GET /v1/journal/export` and write each record once to stdout.
async fn export(c: &ApiClient, from: &str, to: &str, format: &str) -> anyhow::Result<()> {
    use posgate::journal::archive::export::{header, line, Format};
    use std::io::Write;
    let format: Format = format.parse().map_err(anyhow::Error::msg)?;
    for (name, d) in [("--from", from), ("--to", to)] {
        if !posgate::journal::archive::valid_day(d) {
            bail!("{name} must be a date YYYY-MM-DD, not {d:?}");
        }
    }
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    out.write_all(header(format).as_bytes())?;
    let mut after = 0u64;
    loop {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("from", from).append_pair("to", to).append_pair("after", &after.to_string()).append_pair("limit", "1000");
        let (s, v) = c.get(&format!("/v1/journal/export?{}", q.finish())).await?;
        if s >= 400 {
            let why = v.get("detail").or_else(|| v.get("title")).and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| v.to_string());
            bail!("the daemon answered HTTP {s}: {why}");
        }
        for r in v["records"].as_array().map(Vec::as_slice).unwrap_or_default() {
            out.write_all(line(format, r).as_bytes())?;
        }
        match v["next_after"].as_u64() {
            Some(n) if n > after => after = n,
            _ => break,
        }
    }
    out.flush()?;
    Ok(())
}
