//! Plain words for network failures: what the POS app, the journal, the log and `posgate doctor` say.
//!
//! Every text here is built from what went wrong (refused, reset, certificate for another name, …),
//! never from an error's `Debug` form, and anything the peer chose (names in its certificate) is cut short.
use std::error::Error as StdError;
use std::io;

use rustls::CertificateError;

/// At most this many characters of anything a peer chose (names in its certificate).
const PEER_TEXT_MAX: usize = 80;

/// Cut text from outside to `max` characters, control characters replaced.
pub fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { '?' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Why a TCP connection to `peer` (`host:port`) could not be made.
pub fn connect_failed(peer: &str, e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => format!("connection refused by {peer}"),
        ConnectionReset | ConnectionAborted => format!("connection to {peer} was reset"),
        TimedOut => format!("no connection to {peer}: timed out"),
        AddrNotAvailable | AddrInUse => format!("no local address to connect to {peer} from"),
        PermissionDenied => format!("connecting to {peer} is not permitted (firewall?)"),
        NotFound => format!("cannot resolve {peer}"),
        _ => match e.raw_os_error() {
            Some(libc_unreachable) if is_unreachable(libc_unreachable) => format!("{peer} is unreachable (no route)"),
            _ => format!("cannot connect to {peer}: {}", io_words(e)),
        },
    }
}

/// ENETUNREACH (101) and EHOSTUNREACH (113) on Linux.
fn is_unreachable(code: i32) -> bool {
    cfg!(target_os = "linux") && (code == 101 || code == 113)
}

/// Why a TLS handshake with `peer` failed (`e` is what tokio-rustls returned).
pub fn handshake_failed(peer: &str, host: &str, e: &io::Error) -> String {
    format!("TLS handshake with {peer} failed: {}", io_cause(e, host))
}

/// The cause inside an I/O error: a TLS error in words, or the kind of I/O failure.
pub fn io_cause(e: &io::Error, host: &str) -> String {
    if let Some(inner) = e.get_ref() {
        if let Some(t) = inner.downcast_ref::<rustls::Error>() {
            return tls(t, host);
        }
        if let Some(found) = find_known(inner, host) {
            return found;
        }
    }
    io_words(e)
}

/// The kind of an I/O failure in words (the message the OS gives, without Rust's wrapping).
pub fn io_words(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted => "the connection was reset".into(),
        BrokenPipe => "the connection was closed while writing".into(),
        UnexpectedEof => "the connection was closed by the server".into(),
        ConnectionRefused => "connection refused".into(),
        TimedOut => "timed out".into(),
        _ => match e.raw_os_error() {
            // The OS text ("No route to host (os error 113)") is plain; drop the code.
            Some(_) => {
                let s = e.to_string();
                s.split(" (os error").next().unwrap_or(&s).to_string()
            }
            None => match e.get_ref() {
                Some(inner) => bounded(&inner.to_string(), 200),
                None => e.kind().to_string(),
            },
        },
    }
}

/// A rustls error in words; `host` is the name we asked for.
pub fn tls(e: &rustls::Error, host: &str) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => certificate(c, host),
        E::NoCertificatesPresented => "the server presented no certificate".into(),
        E::AlertReceived(a) => format!("the server refused the handshake (TLS alert {})", bounded(&format!("{a:?}").to_lowercase(), 40)),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "the server does not speak TLS as expected (is it an HTTPS port?)".into()
        }
        E::PeerIncompatible(_) => "the server supports no TLS version or cipher we accept".into(),
        E::PeerMisbehaved(_) => "the server broke the TLS protocol".into(),
        E::DecryptError => "the TLS session could not be decrypted (keys disagree)".into(),
        E::PeerSentOversizedRecord => "the server sent an oversized TLS record".into(),
        E::General(s) => bounded(s, 200),
        other => bounded(&other.to_string(), 200),
    }
}

/// A certificate verification failure in words.
pub fn certificate(c: &CertificateError, host: &str) -> String {
    use CertificateError as C;
    match c {
        C::NotValidForName => format!("the server's certificate is not valid for {host}"),
        C::NotValidForNameContext { presented, .. } => {
            let names: Vec<String> = presented.iter().take(4).map(|n| bounded(presented_name(n), PEER_TEXT_MAX)).collect();
            match names.len() {
                0 => format!("the server's certificate is not valid for {host} (it names no host)"),
                _ => {
                    format!("the server's certificate is not valid for {host} (it is for {}{})", names.join(", "), if presented.len() > 4 { ", …" } else { "" })
                }
            }
        }
        C::UnknownIssuer => "the server's certificate is not signed by a CA in the profile's CA bundle (ca_file)".into(),
        C::Expired => "the server's certificate has expired".into(),
        C::ExpiredContext { not_after, .. } => format!("the server's certificate expired on {}", date(not_after.as_secs())),
        C::NotValidYet => "the server's certificate is not valid yet (is this PC's clock right?)".into(),
        C::NotValidYetContext { not_before, .. } => {
            format!("the server's certificate is not valid before {} (is this PC's clock right?)", date(not_before.as_secs()))
        }
        C::Revoked => "the server's certificate has been revoked".into(),
        // What a certificate from another CA of the same name (a re-made test CA) looks like.
        C::BadSignature => "the server's certificate does not verify against the profile's CA bundle (ca_file): bad signature".into(),
        C::BadEncoding => "the server's certificate is malformed".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => "the server's certificate is not meant for a TLS server".into(),
        C::UnhandledCriticalExtension => "the server's certificate has a critical extension we do not understand".into(),
        other => format!("the server's certificate was refused: {}", bounded(&other.to_string(), 160)),
    }
}

/// webpki lists a certificate's names as `DnsName("a.example")` / `IpAddress(10.0.0.1)`: keep the name.
fn presented_name(n: &str) -> &str {
    for (open, close) in [("DnsName(\"", "\")"), ("UniformResourceIdentifier(\"", "\")"), ("IpAddress(", ")")] {
        if let Some(inner) = n.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            return inner;
        }
    }
    n
}

fn date(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0).map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| format!("{unix} (UNIX time)"))
}

/// Walk an error's `source()` chain (looking inside I/O errors) for a TLS or I/O error we can put
/// in words; the first one found wins (the outermost, which says most about where it happened).
pub fn find_known(e: &(dyn StdError + 'static), host: &str) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    let mut depth = 0;
    while let Some(err) = cur {
        if depth > 16 {
            break;
        }
        depth += 1;
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(tls(t, host));
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(found) = find_known(inner, host) {
                    return Some(found);
                }
            }
            return Some(io_words(io));
        }
        cur = err.source();
    }
    None
}

/// A hyper exchange failure (writing the request or reading the answer) in words.
pub fn exchange(e: &hyper::Error, host: &str) -> String {
    if let Some(found) = e.source().and_then(|s| find_known(s, host)) {
        return found;
    }
    if e.is_incomplete_message() {
        "the connection was closed before the answer was complete".into()
    } else if e.is_canceled() || e.is_closed() {
        "the connection was closed".into()
    } else if e.is_parse() || e.is_parse_status() {
        "the answer is not valid HTTP".into()
    } else if e.is_parse_too_large() {
        "the answer's headers are too large".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else if e.is_body_write_aborted() {
        "the request body could not be written".into()
    } else {
        // hyper's Display is a short phrase ("error reading a body from connection"), never a dump.
        bounded(&e.to_string(), 200)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_a_certificate_are_bounded() {
        let long = "x".repeat(10_000);
        let c = CertificateError::NotValidForNameContext {
            expected: rustls_pki_types::ServerName::try_from("127.0.0.1").expect("ip").to_owned(),
            presented: vec![long; 100],
        };
        let text = certificate(&c, "127.0.0.1");
        assert!(text.len() < 500, "{}", text.len());
        assert!(text.starts_with("the server's certificate is not valid for 127.0.0.1"), "{text}");
    }

    #[test]
    fn io_errors_read_as_words() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_failed("127.0.0.1:4443", &e), "connection refused by 127.0.0.1:4443");
        let e = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(handshake_failed("h:1", "h", &e).contains("not signed by a CA"), "{}", handshake_failed("h:1", "h", &e));
    }
}
