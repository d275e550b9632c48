//! The .deb end to end (built from this test's binary, installed with dpkg into a scratch root, the installed daemon
//! serving from the installed config) and systemd readiness: `READY=1` on `$NOTIFY_SOCKET` only once the socket answers.
//!
//! The scratch install is `dpkg --root R --force-script-chrootless`: dpkg unpacks under R, keeps its database in
//! R/var/lib/dpkg and runs the maintainer scripts on the host with `DPKG_ROOT=R`, which they honour
//! (`systemd-sysusers --root`, deb-systemd-helper, every path prefixed). `--force-depends`: the scratch root has
//! no libc6 or systemd package. As a user other than root, `--force-not-root` is added and ownership is not checked.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use posgate::client::ApiClient;
use serde_json::json;

use crate::support::{fast_profile, World, TMK_HEX};

const CARD: &str = "6222020000000000008";

/// Whether `tool` is on PATH (the test runs where it can and says why not where it cannot).
fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).any(|d| d.join(tool).is_file()))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    // /proc/self belongs to the effective user (no libc call needed; the crate's nix lacks the `user` feature).
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn show(o: &Output) -> String {
    format!("status {}\nstdout:\n{}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `packaging/deb/build.sh` on this test's binary (gzip -1: a debug binary is large); the .deb's path.
fn build_deb(out: &Path) -> PathBuf {
    let o = Command::new(repo().join("packaging/deb/build.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_posgate"))
        .arg("--out")
        .arg(out)
        .arg("--fast")
        .output()
        .expect("run packaging/deb/build.sh");
    assert!(o.status.success(), "build.sh failed: {}", show(&o));
    let deb = PathBuf::from(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "build.sh printed no .deb: {}", show(&o));
    deb
}

/// `dpkg --root <root>` with the maintainer scripts run chrootless (`DPKG_ROOT`); `args` are the action.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).expect("admindir");
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).expect("admindir");
    let status = root.join("var/lib/dpkg/status");
    if !status.exists() {
        std::fs::write(&status, "").expect("status file");
    }
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display())).args(["--force-script-chrootless", "--force-depends", "--log=/dev/null"]);
    if !is_root() {
        cmd.arg("--force-not-root");
    }
    // dpkg looks for ldconfig and start-stop-daemon on PATH, which a non-login shell may lack the sbin dirs for.
    let path = format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default());
    cmd.args(args).env("PATH", path).stdin(Stdio::null()).output().expect("run dpkg")
}

fn dpkg_ok(root: &Path, args: &[&str]) {
    let o = dpkg(root, args);
    assert!(o.status.success(), "dpkg {args:?} failed: {}", show(&o));
}

/// A field of the installed package from the scratch root's database (`${Status}`, `${Conffiles}`).
fn query(root: &Path, format: &str) -> String {
    let o = Command::new("dpkg-query")
        .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
        .args(["-W", "-f", format, "posgate"])
        .output()
        .expect("dpkg-query");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The numeric id of `name` in a passwd or group file under the scratch root, and the line's last field.
fn entry(root: &Path, file: &str, name: &str) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(root.join("etc").join(file)).ok()?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.last()?.to_string())))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// Where to skip: no dpkg (not a Debian-family machine).
fn skip_without_dpkg(test: &str) -> bool {
    if have("dpkg") && have("dpkg-deb") && have("dpkg-query") {
        return false;
    }
    eprintln!("SKIP {test}: dpkg is not installed here (the .deb can be built and installed only on a Debian-family system)");
    true
}

/// Rewrite `from` to `to` in the installed config's text, insisting it is there (a changed shipped config must be
/// noticed here, not silently run with the packaged paths).
fn rewrite(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the installed posgate.toml no longer has {from:?}; update tests/it/package.rs:\n{text}");
    text.replace(from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deb_installs_into_a_scratch_root_serves_from_the_installed_config_and_purges_only_on_purge() {
    if skip_without_dpkg("deb_installs_into_a_scratch_root…") {
        return;
    }
    let world = World::new("deb-install").await;
    let deb = build_deb(&world.dir.join("out"));
    let root = world.dir.join("root");
    dpkg_ok(&root, &["-i", deb.to_str().expect("utf-8 path")]);
    assert_eq!(query(&root, "${Status}"), "install ok installed");

    // Conffiles: the daemon config and every example profile, nothing else.
    let mut want = vec!["/etc/posgate/posgate.toml".to_string()];
    for e in std::fs::read_dir(repo().join("terminal-profiles")).expect("terminal-profiles") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") {
            want.push(format!("/etc/posgate/examples/{name}"));
        }
    }
    want.sort();
    let conffiles = query(&root, "${Conffiles}");
    let mut got: Vec<String> = conffiles.lines().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect();
    got.sort();
    assert_eq!(got, want, "conffiles:\n{conffiles}");

    // The system user, in the device groups; the data dir; the token, 0640 root:posgate.
    let (uid, _) = entry(&root, "passwd", "posgate").expect("no posgate user in the scratch root's /etc/passwd");
    let (gid, _) = entry(&root, "group", "posgate").expect("no posgate group");
    for g in ["dialout", "input"] {
        let (_, members) = entry(&root, "group", g).unwrap_or_else(|| panic!("no {g} group"));
        assert!(members.split(',').any(|m| m == "posgate"), "posgate is not in {g}: {members:?}");
    }
    let data = root.join("var/lib/posgate");
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    let token_path = root.join("etc/posgate/api-token");
    assert_eq!(mode(&token_path), 0o640, "the API token's mode");
    if is_root() {
        let m = std::fs::metadata(&token_path).expect("token");
        assert_eq!((m.uid(), m.gid()), (0, gid), "the API token belongs to root:posgate");
        assert_eq!(std::fs::metadata(&data).expect("data").uid(), uid, "the data dir belongs to posgate");
    }
    let token = std::fs::read_to_string(&token_path).expect("token");
    assert!(token.trim().len() >= 32 && token.trim().bytes().all(|b| b.is_ascii_hexdigit()), "token {:?}", token.len());
    for f in
        ["lib/systemd/system/posgate.service", "usr/lib/sysusers.d/posgate.conf", "lib/udev/rules.d/70-posgate.rules", "usr/lib/modules-load.d/posgate.conf"]
    {
        assert!(root.join(f).is_file(), "{f} is not installed");
    }
    let udev = std::fs::read_to_string(root.join("lib/udev/rules.d/70-posgate.rules")).expect("udev rule");
    assert!(udev.contains("GROUP=\"posgate\"") && udev.contains("ENV{ID_MM_DEVICE_IGNORE}=\"1\""), "{udev}");
    // Enabled as on a real system: the link's target is the unit's absolute path in the installed system.
    let wants = std::fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/posgate.service")).expect("the unit is not enabled");
    assert_eq!(wants, Path::new("/lib/systemd/system/posgate.service"));
    let man = root.join("usr/share/man/man1/posgate.1.gz");
    assert!(std::fs::metadata(&man).expect("man page").len() > 100);

    // What a technician does: one example profile into terminal-profiles/ (here pointed at the simulator), its
    // CA and master key beside it. The daemon config is the installed one with only its absolute paths moved
    // under the scratch root and a free TCP port, written beside it so its relative paths resolve as installed.
    let etc = root.join("etc/posgate");
    let example = std::fs::read_to_string(etc.join("examples/loyalty.toml")).expect("installed example");
    let profile = fast_profile(&example, "https://127.0.0.1:18443", &format!("https://{}", world.sim_addr));
    std::fs::write(etc.join("terminal-profiles/loyalty.toml"), profile).expect("profile");
    std::fs::create_dir_all(etc.join("pki")).expect("pki");
    std::fs::copy(world.dir.join("pki/test-ca.pem"), etc.join("pki/test-ca.pem")).expect("ca");
    std::fs::create_dir_all(etc.join("secrets")).expect("secrets");
    std::fs::write(etc.join("secrets/loyalty-tmk.hex"), TMK_HEX).expect("tmk");
    std::fs::set_permissions(etc.join("secrets/loyalty-tmk.hex"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let run = root.join("run/posgate");
    std::fs::create_dir_all(&run).expect("run dir (systemd's RuntimeDirectory=)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let installed = std::fs::read_to_string(etc.join("posgate.toml")).expect("installed config");
    let text = rewrite(&installed, "\"/var/lib/posgate\"", &format!("{:?}", data.display().to_string()));
    let socket = run.join("posgate.sock");
    let text = rewrite(&text, "\"/run/posgate/posgate.sock\"", &format!("{:?}", socket.display().to_string()));
    let text = rewrite(&text, "\"127.0.0.1:7878\"", &format!("\"127.0.0.1:{port}\""));
    let config = etc.join("posgate.test.toml");
    std::fs::write(&config, text).expect("override config");

    // The installed binary, from the installed config (its log in a file, shown if it does not come up).
    let log = world.dir.join("installed-posgate.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // As under the unit (`Group=posgate`): the daemon's group is the token's group, so the 0640 root:posgate
    // token passes the secret-file check (a group other than the daemon's may not read a secret).
    let mut child = tokio::process::Command::new(root.join("usr/bin/posgate"))
        .gid(gid)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("POSGATE_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .expect("start the installed posgate");
    let unix = ApiClient::unix(&socket);
    let mut up = false;
    for _ in 0..1000 {
        if let Ok((200, _)) = unix.get("/v1/status").await {
            up = true;
            break;
        }
        assert!(child.try_wait().expect("wait").is_none(), "the installed posgate exited early:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "the installed posgate did not answer on {}:\n{}", socket.display(), log_text());
    // A real sale over the Unix socket, reaching the simulator.
    let (s, v) = unix
        .post(
            "/v1/profiles/loyalty/consume",
            json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 500, "cashAmount": 0, "registerTraceNo": "D1"}),
            Some("deb-1"),
        )
        .await
        .expect("consume");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_eq!(world.sim.state_snapshot().transactions.iter().filter(|t| t.op == "consume").count(), 1);
    // The TCP listener takes the token postinst made, and nothing else.
    let tcp = ApiClient::tcp(format!("127.0.0.1:{port}"), Some(posgate::secret::Secret::new(token.trim().as_bytes().to_vec())));
    assert_eq!(tcp.get("/v1/status").await.expect("tcp status").0, 200);
    let wrong = ApiClient::tcp(format!("127.0.0.1:{port}"), Some(posgate::secret::Secret::new(b"not-the-token".to_vec())));
    assert_eq!(wrong.get("/v1/status").await.expect("tcp status").0, 401);
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("posgate stops on SIGTERM").expect("wait");
    assert!(exit.success(), "{exit}");

    // A second install (reinstall or upgrade) keeps the token, and so a token the technician set.
    dpkg_ok(&root, &["-i", deb.to_str().expect("utf-8 path")]);
    assert_eq!(std::fs::read_to_string(&token_path).expect("token"), token, "a reinstall replaced the API token");
    std::fs::write(&token_path, "technicians-own-token\n").expect("set token");
    dpkg_ok(&root, &["-i", deb.to_str().expect("utf-8 path")]);
    assert_eq!(std::fs::read_to_string(&token_path).expect("token"), "technicians-own-token\n");

    // remove: program gone, journal and configuration kept.
    dpkg_ok(&root, &["-r", "posgate"]);
    assert_eq!(query(&root, "${Status}"), "deinstall ok config-files");
    assert!(!root.join("usr/bin/posgate").exists());
    assert!(std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0) > 0, "remove deleted the journal");
    assert!(token_path.exists() && etc.join("posgate.toml").exists(), "remove deleted configuration");
    // purge: journal, token and conffiles gone.
    dpkg_ok(&root, &["-P", "posgate"]);
    assert!(!data.exists(), "purge kept {}", data.display());
    assert!(!token_path.exists(), "purge kept the API token");
    assert!(!etc.join("posgate.toml").exists() && !etc.join("examples/loyalty.toml").exists(), "purge kept conffiles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_unit_passes_systemd_analyze_verify() {
    if skip_without_dpkg("the_installed_unit_passes_systemd_analyze_verify") {
        return;
    }
    if !have("systemd-analyze") {
        eprintln!("SKIP the_installed_unit_passes_systemd_analyze_verify: systemd-analyze is not installed here");
        return;
    }
    let dir = crate::support::scratch("deb-verify");
    let deb = build_deb(&dir.join("out"));
    let root = dir.join("root");
    dpkg_ok(&root, &["-i", deb.to_str().expect("utf-8 path")]);
    // The targets the unit names (multi-user, network-online, the default dependencies) come from the host's
    // systemd: `--root` resolves every unit, and ExecStart=, under the scratch root.
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"].into_iter().map(Path::new).find(|p| p.join("multi-user.target").exists());
    let Some(host_units) = host_units else {
        eprintln!("SKIP the_installed_unit_passes_systemd_analyze_verify: no systemd units on this host to resolve multi-user.target");
        return;
    };
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("units dir");
    for e in std::fs::read_dir(host_units).expect("host units").flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("posgate") || !e.path().is_file() {
            continue;
        }
        let _ = std::fs::copy(e.path(), units.join(&name));
    }
    let o = Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .args(["verify", "--man=no", "posgate.service"])
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&o.stderr);
    // A bad value is only a warning to systemd (the key is ignored), so any word about posgate fails the test.
    assert!(o.status.success() && !err.contains("posgate"), "systemd-analyze verify: {}", show(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deb_is_lintian_clean() {
    if skip_without_dpkg("the_deb_is_lintian_clean") {
        return;
    }
    if !have("lintian") {
        eprintln!("SKIP the_deb_is_lintian_clean: lintian is not installed here (.ci/run installs it with apt)");
        return;
    }
    let dir = crate::support::scratch("deb-lintian");
    let deb = build_deb(&dir.join("out"));
    // Every tag down to info and pedantic fails; the package's overrides (packaging/deb/lintian-overrides) say why
    // each one they silence does not apply.
    let o = Command::new("lintian")
        .args(["--fail-on", "error,warning,info,pedantic", "--display-info", "--pedantic", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("lintian");
    assert!(o.status.success(), "lintian: {}", show(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under systemd (`Type=notify`), `READY=1` tells the units ordered after posgate that they may connect: the
/// socket must answer the first request made after it, with no retry; `STOPPING=1` follows SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sends_ready_on_notify_socket_only_once_the_socket_answers() {
    let world = World::new("notify").await;
    let manager_path = world.dir.join("notify.sock");
    let manager = tokio::net::UnixDatagram::bind(&manager_path).expect("bind the fake service manager");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
        .arg("serve")
        .arg("--config")
        .arg(&world.config)
        .env("NOTIFY_SOCKET", &manager_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn posgate");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), manager.recv(&mut buf)).await.expect("no READY=1 within 30 s").expect("recv");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    // At once, one attempt: the journal is open and the listener bound.
    let (s, v) = world.client().get("/v1/status").await.expect("the socket did not answer right after READY=1");
    assert_eq!(s, 200, "{v}");
    let (s, v) = world.client().post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let n = tokio::time::timeout(Duration::from_secs(10), manager.recv(&mut buf)).await.expect("no STOPPING=1 after SIGTERM").expect("recv");
    let second = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(second.lines().any(|l| l == "STOPPING=1") && !second.contains("READY=1"), "READY=1 is sent once, then STOPPING=1: {second:?}");
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exit").expect("wait");
    assert!(exit.success(), "{exit}");
}
