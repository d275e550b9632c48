//! The one table of backend kinds: what `build`, config checks, the demo, `doctor` and the docs all read.
//!
//! Adding a vendor is one folder (`src/backend/<kind>/`) and one line in [`KINDS`].
use std::path::Path;
use std::sync::Arc;

use super::{consign, lottery, loyalty, scenic, wallet, Backend};
use crate::config::{ConfigError, DaemonConfig, Profile};
use crate::net::client::HttpsClient;

/// Builds one profile's backend from its validated profile and its HTTP client.
pub type BuildFn = fn(&Profile, HttpsClient) -> Result<Arc<dyn Backend>, ConfigError>;

/// A backend builder that may capture state (tests build their own backend): `Engine::open_with`.
pub type BuildWith = dyn Fn(&Profile, HttpsClient) -> Result<Arc<dyn Backend>, ConfigError> + Send + Sync;

/// One backend kind.
#[derive(Clone, Copy)]
pub struct KindEntry {
    /// The profile's `backend =` value.
    pub name: &'static str,
    /// One line for people: what the counter does with it.
    pub about: &'static str,
    /// The vendor document it follows (`docs/specs/<spec>`).
    pub spec: &'static str,
    pub build: BuildFn,
    /// The example profile shipped in the repository, relative to its root.
    pub example_profile: &'static str,
    /// That profile's text (the demo writes it out with the simulator's address).
    pub example_text: &'static str,
    /// The `base_url` the example profile names, which the demo replaces with its simulator's address.
    /// `None`: the demo has no simulator for this kind and leaves it out.
    pub demo_url: Option<&'static str>,
    /// What this kind knows is weak in a profile's setup (a short key, say), one line each: shown by
    /// `doctor` and `GET /v1/status`. The vendor says it; the engine only passes it on.
    pub warnings: fn(&Profile) -> Vec<String>,
}

impl std::fmt::Debug for KindEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindEntry").field("name", &self.name).field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// A kind with nothing of its own to warn about.
fn no_warnings(_: &Profile) -> Vec<String> {
    Vec::new()
}

fn build_loyalty(p: &Profile, http: HttpsClient) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(Arc::new(loyalty::LoyaltyBackend::new(p, http)?))
}

fn build_lottery(p: &Profile, http: HttpsClient) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(Arc::new(lottery::LotteryBackend::new(p, http)?))
}

fn build_wallet(p: &Profile, http: HttpsClient) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(Arc::new(wallet::WalletBackend::new(p, http)?))
}

fn build_scenic(p: &Profile, http: HttpsClient) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(Arc::new(scenic::ScenicBackend::new(p, http)?))
}

fn build_consign(p: &Profile, http: HttpsClient) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(Arc::new(consign::ConsignBackend::new(p, http)?))
}

/// Every backend kind this build knows, in the order the docs list them.
pub static KINDS: &[KindEntry] = &[
    KindEntry {
        name: loyalty::KIND,
        about: "member-card POS: check-in, card query, consume, void, refund, vouchers and tickets, settlement",
        spec: "loyalty-pos.txt",
        build: build_loyalty,
        example_profile: "terminal-profiles/loyalty.toml",
        example_text: include_str!("../../terminal-profiles/loyalty.toml"),
        demo_url: Some("https://127.0.0.1:18443"),
        warnings: no_warnings,
    },
    KindEntry {
        name: lottery::KIND,
        about: "instant-lottery prize redemption: station login, redeem, reports, daily reconciliation, risk rules",
        spec: "lottery-redemption.txt",
        build: build_lottery,
        example_profile: "terminal-profiles/lottery.toml",
        example_text: include_str!("../../terminal-profiles/lottery.toml"),
        demo_url: Some("https://127.0.0.1:18444"),
        warnings: no_warnings,
    },
    KindEntry {
        name: wallet::KIND,
        about: "stored-value accounts: offline pay, cancel and undo, balance, card opening and its delivery, products, online open, transfer",
        spec: "stored-value-account.txt",
        build: build_wallet,
        example_profile: "terminal-profiles/wallet.toml",
        example_text: include_str!("../../terminal-profiles/wallet.toml"),
        demo_url: Some("http://127.0.0.1:18445"),
        warnings: wallet::profile_warnings,
    },
    KindEntry {
        name: scenic::KIND,
        about: "scenic-spot tickets: create an order after payment, cancel it, gate check-ins reported back",
        spec: "scenic-tickets.txt",
        build: build_scenic,
        example_profile: "terminal-profiles/scenic.toml",
        example_text: include_str!("../../terminal-profiles/scenic.toml"),
        demo_url: Some("https://127.0.0.1:18446"),
        warnings: no_warnings,
    },
    KindEntry {
        name: consign::KIND,
        about: "prepaid card consignment: submit a card (AES secret), query an order, its result by callback or polling",
        spec: "card-consignment.txt",
        build: build_consign,
        example_profile: "terminal-profiles/consign.toml",
        example_text: include_str!("../../terminal-profiles/consign.toml"),
        demo_url: Some("http://127.0.0.1:18447"),
        warnings: no_warnings,
    },
];

/// The entry of a kind.
pub fn find(name: &str) -> Option<&'static KindEntry> {
    KINDS.iter().find(|k| k.name == name)
}

/// The known kinds, for error texts: `loyalty, lottery`.
pub fn names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// Refuse a profile whose `backend =` names no kind of this build, naming its file and line.
pub fn check(profile: &Profile) -> Result<&'static KindEntry, ConfigError> {
    find(&profile.backend).ok_or_else(|| {
        ConfigError::field(&profile.source, profile.backend_line, "backend", format!("unknown backend kind {:?} (known: {})", profile.backend, names()))
    })
}

/// Load the daemon config and check every profile's kind against the registry: what `serve` and
/// `doctor` use. (`config` itself names no backend, so the check runs here.)
pub fn load_config(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let cfg = DaemonConfig::load(path)?;
    for p in &cfg.profiles {
        check(p)?;
    }
    Ok(cfg)
}

/// Load one profile and check its kind.
pub fn load_profile(path: &Path) -> Result<Profile, ConfigError> {
    let p = Profile::load(path)?;
    check(&p)?;
    Ok(p)
}

/// What a person should know about a profile's setup, one line each (`GET /v1/status`, `posgate status`,
/// `posgate doctor`): that it speaks plain HTTP, and whatever its backend kind finds weak
/// ([`KindEntry::warnings`]).
pub fn warnings(p: &Profile) -> Vec<String> {
    let mut out = Vec::new();
    if p.plain_http {
        out.push(format!(
            "profile {}: plain HTTP to {} (no TLS, allowed by allow_plain_http): only the vendor's signatures and encryption protect the payloads",
            p.name, p.base_url
        ));
    }
    if let Some(k) = find(&p.backend) {
        out.extend((k.warnings)(p));
    }
    out
}

/// The list of backends as the README and ARCHITECTURE show it (between their `backends:begin` and
/// `backends:end` markers; a test keeps them equal), and as `posgate backends` prints it.
pub fn markdown() -> String {
    KINDS.iter().map(|k| format!("- `{}` — {} (`{}`; example `{}`)\n", k.name, k.about, k.spec, k.example_profile)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn between<'a>(doc: &'a str, file: &str) -> &'a str {
        let begin = doc.find("<!-- backends:begin").unwrap_or_else(|| panic!("{file}: no backends:begin marker"));
        let start = doc[begin..].find('\n').map(|i| begin + i + 1).unwrap_or_else(|| panic!("{file}: marker line"));
        let end = doc.find("<!-- backends:end -->").unwrap_or_else(|| panic!("{file}: no backends:end marker"));
        &doc[start..end]
    }

    #[test]
    fn the_docs_list_the_registrys_backends() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["README.md", "ARCHITECTURE.md"] {
            let doc = std::fs::read_to_string(root.join(file)).unwrap();
            assert_eq!(between(&doc, file), markdown(), "{file}: the backend list differs from the registry (paste `posgate backends`)");
        }
    }

    #[test]
    fn every_kind_has_its_folder_example_and_unique_name() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (i, k) in KINDS.iter().enumerate() {
            assert!(KINDS[..i].iter().all(|o| o.name != k.name), "{} twice", k.name);
            assert!(root.join("src/backend").join(k.name).join("mod.rs").is_file(), "{}: no folder", k.name);
            let example = std::fs::read_to_string(root.join(k.example_profile)).unwrap();
            assert_eq!(example, k.example_text);
            assert!(example.contains(&format!("backend = \"{}\"", k.name)), "{}", k.example_profile);
            if let Some(url) = k.demo_url {
                assert!(example.contains(url), "{}: the demo replaces {url}, which it does not name", k.example_profile);
            }
        }
    }

    #[test]
    fn an_unknown_kind_is_refused_with_file_line_and_the_known_kinds() {
        let text = "name = \"a\"\nbackend = \"lotto\"\nbase_url = \"https://h\"\nstore = \"1\"\nterminal = \"2\"\n";
        let p = Profile::parse(Path::new("/x/a.toml"), text).expect("config itself takes any kind");
        let e = check(&p).expect_err("unknown").to_string();
        assert!(
            e.contains("/x/a.toml:2")
                && e.contains("backend")
                && e.contains("unknown backend kind \"lotto\" (known: loyalty, lottery, wallet, scenic, consign)"),
            "{e}"
        );
    }
}
