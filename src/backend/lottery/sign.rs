//! The lottery request signature (section 3.2): sorted `k=v` pairs, `key=<app_secret>` last, MD5 or SHA-1, upper-case hex.
//!
//! Shared by the backend (to sign) and the simulator (to verify), so the two cannot drift apart.
use md5::{Digest as _, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The `sign_method` values of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMethod {
    Md5,
    Sha1,
}

impl SignMethod {
    /// The wire spelling (`MD5`, `SHA-1`).
    pub fn wire(self) -> &'static str {
        match self {
            SignMethod::Md5 => "MD5",
            SignMethod::Sha1 => "SHA-1",
        }
    }

    /// Parse a wire or profile spelling (case-insensitive; `SHA1` accepted). An absent value means MD5
    /// (the spec's default), which the caller decides.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "MD5" => Some(SignMethod::Md5),
            "SHA-1" | "SHA1" => Some(SignMethod::Sha1),
            _ => None,
        }
    }
}

/// The text that is digested: every parameter but `sign` (absent optional ones simply not passed),
/// sorted by name in ASCII order, `key=<secret>` appended last, joined `k=v` with `&`. Values are the
/// raw values, not URL-encoded. The result holds the secret: never log it.
pub fn string_to_sign(params: &[(&str, &str)], secret: &str) -> String {
    let mut sorted: Vec<&(&str, &str)> = params.iter().filter(|(k, _)| *k != "sign").collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut s = String::new();
    for (k, v) in sorted {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('&');
    }
    s.push_str("key=");
    s.push_str(secret);
    s
}

/// Upper-case hex digest of [`string_to_sign`].
pub fn sign(params: &[(&str, &str)], secret: &str, method: SignMethod) -> String {
    let text = string_to_sign(params, secret);
    let digest = match method {
        SignMethod::Md5 => Md5::digest(text.as_bytes()).to_vec(),
        SignMethod::Sha1 => Sha1::digest(text.as_bytes()).to_vec(),
    };
    hex::encode_upper(digest)
}

/// Check a received `sign` in constant time, case-insensitively (specs/README.md).
pub fn verify(params: &[(&str, &str)], secret: &str, method: SignMethod, received: &str) -> bool {
    let want = sign(params, secret, method);
    let got = received.trim().to_ascii_uppercase();
    want.len() == got.len() && bool::from(want.as_bytes().ct_eq(got.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "demo-app-secret";
    const LOGIN_PJ: &str = r#"{"stationId":"21010001","clerkId":"0","password":"123456","type":"1","version":"24","serialNo":"X1P4H11102000205"}"#;
    const AWARD_PJ: &str =
        r#"{"userId":"wx0001","userRealIp":"10.0.0.8","transacId":"0120180507102344000042","type":1701,"barCode":"G123456789012345678901234"}"#;

    fn params<'a>(pj: &'a str, method: &'a str, token: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
        // Deliberately unsorted: signing sorts.
        let mut p = vec![
            ("v", "1.0"),
            ("timestamp", "2018-05-07 10:23:44"),
            ("sign_method", method),
            ("param_json", pj),
            ("format", "json"),
            ("app_key", "aa75c0f6a4bf462ea006b2920034cf5b"),
        ];
        if let Some(t) = token {
            p.push(("access_token", t));
        }
        p
    }

    /// Vectors computed independently with python3 hashlib:
    /// ```text
    /// items = sorted(params.items()); txt = "&".join(f"{k}={v}" for k, v in items) + "&key=demo-app-secret"
    /// hashlib.md5(txt.encode()).hexdigest().upper()   /   hashlib.sha1(txt.encode()).hexdigest().upper()
    /// ```
    /// with app_key, format=json, timestamp "2018-05-07 10:23:44", v=1.0, sign_method, param_json as below,
    /// and access_token "5f2b8c0e9a7d4e3c" only for the thirdAward vectors (absent for login).
    #[test]
    fn md5_and_sha1_match_python_hashlib_with_and_without_the_optional_token() {
        let cases = [
            (LOGIN_PJ, "MD5", None, SignMethod::Md5, "76A5F80A8DD5E0A34670F8183995E88C"),
            (AWARD_PJ, "MD5", Some("5f2b8c0e9a7d4e3c"), SignMethod::Md5, "92436B938ECF75E913A9BB99BDF6D562"),
            (LOGIN_PJ, "SHA-1", None, SignMethod::Sha1, "A3AB6359DB7D5E1D05EF7628F376E2942CC93BD3"),
            (AWARD_PJ, "SHA-1", Some("5f2b8c0e9a7d4e3c"), SignMethod::Sha1, "8BABD20EBBE38481B1A21FAD8270F1078AF348C8"),
        ];
        for (pj, wire, token, m, want) in cases {
            let p = params(pj, wire, token);
            assert_eq!(sign(&p, SECRET, m), want, "{wire} token={token:?}");
            assert!(verify(&p, SECRET, m, &want.to_ascii_lowercase()));
            assert!(!verify(&p, "other-secret", m, want));
        }
        // The exact text python digested for the MD5 login vector (the optional token is simply absent).
        assert_eq!(
            string_to_sign(&params(LOGIN_PJ, "MD5", None), SECRET),
            format!("app_key=aa75c0f6a4bf462ea006b2920034cf5b&format=json&param_json={LOGIN_PJ}&sign_method=MD5&timestamp=2018-05-07 10:23:44&v=1.0&key=demo-app-secret")
        );
        // `sign` itself never takes part.
        let mut p = params(LOGIN_PJ, "MD5", None);
        p.push(("sign", "whatever"));
        assert_eq!(sign(&p, SECRET, SignMethod::Md5), "76A5F80A8DD5E0A34670F8183995E88C");
        assert_eq!(SignMethod::parse("sha1"), Some(SignMethod::Sha1));
        assert_eq!(SignMethod::parse("RSA"), None);
    }
}
