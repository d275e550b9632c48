//! Vetted-crate signing and cipher helpers every vendor backend can use: digests, HMAC, RSA, 3DES/AES-ECB, base64.
//!
//! Digests are upper-case hex (the vendors' documents send them so; received ones are compared
//! case-insensitively by [`eq_hex`]). Keys come in as [`Secret`] and the key types here print nothing.
use base64::Engine as _;
use des::cipher::{self, BlockDecrypt, BlockEncrypt, KeyInit};
use md5::Digest as _;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use thiserror::Error;

use crate::secret::Secret;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignError {
    #[error("key: {0}")]
    Key(String),
    #[error("ciphertext: {0}")]
    Cipher(String),
    #[error("base64: {0}")]
    Base64(String),
    #[error("signature: {0}")]
    Signature(String),
}

/// Upper-case hex of MD5.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode_upper(md5::Md5::digest(data))
}

/// Upper-case hex of SHA-1.
pub fn sha1_hex(data: &[u8]) -> String {
    hex::encode_upper(sha1::Sha1::digest(data))
}

/// Upper-case hex of SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode_upper(sha2::Sha256::digest(data))
}

/// Upper-case hex of HMAC-SHA256 under `key`.
pub fn hmac_sha256_hex(key: &Secret, data: &[u8]) -> String {
    use hmac::Mac;
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    match <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key.expose()) {
        Ok(mut m) => {
            m.update(data);
            hex::encode_upper(m.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Constant-time comparison of two hex digests, ignoring case (specs/README.md: received signatures).
pub fn eq_hex(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && a.to_ascii_uppercase().as_bytes().ct_eq(b.to_ascii_uppercase().as_bytes()).into()
}

/// Standard base64 with padding.
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decode standard base64 (whitespace is not allowed).
pub fn unb64(text: &str) -> Result<Vec<u8>, SignError> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| SignError::Base64(e.to_string()))
}

/// The digest an RSA signature is made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaHash {
    Sha1,
    Sha256,
}

/// An RSA private key for PKCS#1 v1.5 signatures. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct RsaSigner(rsa::RsaPrivateKey);

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaSigner(<redacted>)")
    }
}

impl RsaSigner {
    /// From PEM: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &Secret) -> Result<Self, SignError> {
        let text = pem.expose_str().map_err(|_| SignError::Key("the PEM is not UTF-8".into()))?;
        let key = if text.contains("BEGIN RSA PRIVATE KEY") {
            rsa::RsaPrivateKey::from_pkcs1_pem(text).map_err(|e| SignError::Key(format!("PKCS#1 private key: {e}")))?
        } else {
            rsa::RsaPrivateKey::from_pkcs8_pem(text).map_err(|e| SignError::Key(format!("PKCS#8 private key: {e}")))?
        };
        Ok(RsaSigner(key))
    }

    /// PKCS#1 v1.5 signature of `data`, base64.
    pub fn sign_b64(&self, hash: RsaHash, data: &[u8]) -> Result<String, SignError> {
        let sig = match hash {
            RsaHash::Sha1 => rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(self.0.clone()).try_sign(data).map(|s| s.to_vec()),
            RsaHash::Sha256 => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(self.0.clone()).try_sign(data).map(|s| s.to_vec()),
        }
        .map_err(|e| SignError::Signature(e.to_string()))?;
        Ok(b64(&sig))
    }

    /// The matching public key.
    pub fn verifier(&self) -> RsaVerifier {
        RsaVerifier(self.0.to_public_key())
    }
}

/// An RSA public key that checks PKCS#1 v1.5 signatures.
#[derive(Clone, Debug)]
pub struct RsaVerifier(rsa::RsaPublicKey);

impl RsaVerifier {
    /// From PEM: SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, SignError> {
        let key = if pem.contains("BEGIN RSA PUBLIC KEY") {
            rsa::RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| SignError::Key(format!("PKCS#1 public key: {e}")))?
        } else {
            rsa::RsaPublicKey::from_public_key_pem(pem).map_err(|e| SignError::Key(format!("public key: {e}")))?
        };
        Ok(RsaVerifier(key))
    }

    /// Check a base64 PKCS#1 v1.5 signature of `data`.
    pub fn verify_b64(&self, hash: RsaHash, data: &[u8], sig_b64: &str) -> Result<(), SignError> {
        let raw = unb64(sig_b64)?;
        let sig = rsa::pkcs1v15::Signature::try_from(raw.as_slice()).map_err(|e| SignError::Signature(e.to_string()))?;
        match hash {
            RsaHash::Sha1 => rsa::pkcs1v15::VerifyingKey::<sha1::Sha1>::new(self.0.clone()).verify(data, &sig),
            RsaHash::Sha256 => rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(self.0.clone()).verify(data, &sig),
        }
        .map_err(|_| SignError::Signature("does not verify".into()))
    }
}

fn pad_pkcs5(data: &[u8], block: usize) -> Vec<u8> {
    let n = block - data.len() % block;
    let mut v = data.to_vec();
    v.extend(std::iter::repeat_n(n as u8, n));
    v
}

fn unpad_pkcs5(mut data: Vec<u8>, block: usize) -> Result<Vec<u8>, SignError> {
    let n = *data.last().ok_or_else(|| SignError::Cipher("empty".into()))? as usize;
    if data.len() % block != 0 || n == 0 || n > block || n > data.len() || !data[data.len() - n..].iter().all(|&b| b as usize == n) {
        return Err(SignError::Cipher("bad padding (wrong key or not a ciphertext)".into()));
    }
    data.truncate(data.len() - n);
    Ok(data)
}

fn ecb_encrypt<C: BlockEncrypt>(c: &C, data: &[u8], block: usize) -> Vec<u8> {
    let mut v = pad_pkcs5(data, block);
    for chunk in v.chunks_mut(block) {
        c.encrypt_block(cipher::generic_array::GenericArray::from_mut_slice(chunk));
    }
    v
}

fn ecb_decrypt<C: BlockDecrypt>(c: &C, data: &[u8], block: usize) -> Result<Vec<u8>, SignError> {
    if data.is_empty() || data.len() % block != 0 {
        return Err(SignError::Cipher(format!("{} bytes is not a whole number of {block}-byte blocks", data.len())));
    }
    let mut v = data.to_vec();
    for chunk in v.chunks_mut(block) {
        c.decrypt_block(cipher::generic_array::GenericArray::from_mut_slice(chunk));
    }
    unpad_pkcs5(v, block)
}

fn tdes(key: &Secret) -> Result<des::TdesEde3, SignError> {
    des::TdesEde3::new_from_slice(key.expose()).map_err(|_| SignError::Key(format!("3DES needs a 24-byte key, got {} bytes", key.len())))
}

fn aes128(key: &Secret) -> Result<aes::Aes128, SignError> {
    aes::Aes128::new_from_slice(key.expose()).map_err(|_| SignError::Key(format!("AES-128 needs a 16-byte key, got {} bytes", key.len())))
}

/// DES-EDE3, ECB, PKCS#5 padding, with a 24-byte key.
pub fn des3_ecb_encrypt(key: &Secret, data: &[u8]) -> Result<Vec<u8>, SignError> {
    Ok(ecb_encrypt(&tdes(key)?, data, 8))
}

/// The inverse of [`des3_ecb_encrypt`]; garbage (bad length or padding) is an error.
pub fn des3_ecb_decrypt(key: &Secret, data: &[u8]) -> Result<Vec<u8>, SignError> {
    ecb_decrypt(&tdes(key)?, data, 8)
}

/// AES-128, ECB, PKCS#5 padding, with a 16-byte key.
pub fn aes128_ecb_encrypt(key: &Secret, data: &[u8]) -> Result<Vec<u8>, SignError> {
    Ok(ecb_encrypt(&aes128(key)?, data, 16))
}

/// The inverse of [`aes128_ecb_encrypt`].
pub fn aes128_ecb_decrypt(key: &Secret, data: &[u8]) -> Result<Vec<u8>, SignError> {
    ecb_decrypt(&aes128(key)?, data, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = include_str!("../../../tests/fixtures/wallet/test-private-key.pem");
    const PUBLIC: &str = include_str!("../../../tests/fixtures/wallet/test-public-key.pem");

    /// `printf abc | md5sum`, `sha1sum`, `sha256sum`; `openssl dgst -sha256 -hmac key`.
    #[test]
    fn digests_match_coreutils_and_openssl() {
        assert_eq!(md5_hex(b"abc"), "900150983CD24FB0D6963F7D28E17F72");
        assert_eq!(sha1_hex(b"abc"), "A9993E364706816ABA3E25717850C26C9CD0D89D");
        assert_eq!(sha256_hex(b"abc"), "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
        assert_eq!(
            hmac_sha256_hex(&Secret::new(b"key".to_vec()), b"The quick brown fox jumps over the lazy dog"),
            "F7BC83F430538424B13298E6AA6FB143EF4D59A14946175997479DBC2D1A3CD8"
        );
        assert!(eq_hex("f7bc83", "F7BC83"));
        assert!(!eq_hex("f7bc83", "F7BC84"));
        assert!(!eq_hex("f7bc8", "F7BC83"));
    }

    /// `printf '%s' 'hello wallet' | openssl dgst -sha1 -sign test-private-key.pem | base64 -w0` (and -sha256):
    /// PKCS#1 v1.5 is deterministic, so our signatures must equal openssl's byte for byte.
    #[test]
    fn rsa_signatures_equal_openssls_and_verify() {
        let signer = RsaSigner::from_pem(&Secret::new(PRIVATE.as_bytes().to_vec())).expect("key");
        let sha1 = "utWEM/5kM2WwFuSKgTtvScMopXvScTpXQv0V78LGJxDJo8gF9YylGm0rreYx1e8XexAaAgYm+nHzOPnmJdXq/j9JJZPIoV/S+12YYap55Xd8rhUqLRaXPlA3naSjJbiQF9dYemy/B7qg9fBtaaXRqt8DMjqyD0SxZw6g4d+612vl1ftKxS410sVeyXDLF2g9vsvuoWzqRs9lX5h+akwMmc8Yh29BeQJvPzVUNSuB41nTyszq2xpKIYne3QY2/v6zGfFdQ708QA3DTKUwy33bFr+sUTc649j5/8zJs+6LPm+DqdfFPZYQD90lW+k9+qfC3ZaYHOs63M4cbAe+IEeIyQ==";
        assert_eq!(signer.sign_b64(RsaHash::Sha1, b"hello wallet").expect("sign"), sha1);
        let sha256 = "ps2+Y7bEE0Kji85tbSXg8MrMGtj7lfjQLT6E9V7RLkC6FLE+6cDL9y3INljJn0g9LUeqCTFGwQyXA1QFuv4TJ3wYsF3zWWjIv07QZ+pVgMq90nvOc8qxcqw7gdLmhcgy716FTqv9lsUvmzjnKHFd2UL37bY+FdztJb5x7A+5b4c8dbOxV+4u5+jDOZAajC5mZhaLV3Vuo5Jf0nkpBRMhaObYabSGYuek3zCCQEpmXL9aWvToOcCue6F0ukPUDm2q3YZtM3pB17Et1NEKAoiZE/yLU8rKdg9N7j71H5bTUGXoYP4qAhosNEcp7euYINssYYMdJuvNUL8g6Q1WESO6+g==";
        assert_eq!(signer.sign_b64(RsaHash::Sha256, b"hello wallet").expect("sign"), sha256);
        let v = RsaVerifier::from_pem(PUBLIC).expect("public key");
        v.verify_b64(RsaHash::Sha1, b"hello wallet", sha1).expect("verifies");
        v.verify_b64(RsaHash::Sha256, b"hello wallet", sha256).expect("verifies");
        assert!(v.verify_b64(RsaHash::Sha256, b"hello wallet", sha1).is_err(), "a SHA-1 signature is not a SHA-256 one");
        assert!(v.verify_b64(RsaHash::Sha1, b"hello wallet!", sha1).is_err());
        assert!(v.verify_b64(RsaHash::Sha1, b"hello wallet", "not base64!").is_err());
        assert!(!format!("{signer:?}").contains("MII"));
    }

    /// `printf '%s' 13912345678 | openssl enc -des-ede3 -K <hex of the key> -nosalt | base64`;
    /// `printf '%s' card-secret-123 | openssl enc -aes-128-ecb -K 3031…66 -nosalt | base64`.
    #[test]
    fn des3_and_aes_ecb_match_openssl_and_refuse_garbage() {
        let k = Secret::new(b"zjhtwallet-test-appkey-0".to_vec());
        assert_eq!(b64(&des3_ecb_encrypt(&k, b"13912345678").expect("enc")), "O5xlTxm3GY1I/iiJ885JWg==");
        assert_eq!(b64(&des3_ecb_encrypt(&k, "李四".as_bytes()).expect("enc")), "5tuHb1rp90Y=");
        assert_eq!(des3_ecb_decrypt(&k, &unb64("O5xlTxm3GY1I/iiJ885JWg==").expect("b64")).expect("dec"), b"13912345678");
        assert!(des3_ecb_decrypt(&k, b"1234567").is_err());
        assert!(des3_ecb_decrypt(&Secret::new(b"another-key-of-24-bytes!".to_vec()), &unb64("O5xlTxm3GY1I/iiJ885JWg==").expect("b64")).is_err());
        assert!(des3_ecb_encrypt(&Secret::new(b"short".to_vec()), b"x").is_err());
        let a = Secret::new(b"0123456789abcdef".to_vec());
        assert_eq!(b64(&aes128_ecb_encrypt(&a, b"card-secret-123").expect("enc")), "qJpTIT807NgOkLtiwU1Ehw==");
        assert_eq!(aes128_ecb_decrypt(&a, &unb64("qJpTIT807NgOkLtiwU1Ehw==").expect("b64")).expect("dec"), b"card-secret-123");
    }
}
