//! Loyalty key handling: 3DES-ECB, working-key unwrap under the terminal master key, ISO 9564 format-0 PIN blocks.
//!
//! Everything here is `pub` so the simulator checks PIN blocks and issues working keys with the very same
//! code the backend uses to build them (nothing is written twice). Nothing in this module logs, and no
//! error carries key, PIN or card material.
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use des::TdesEde2;
use thiserror::Error;

/// A double-length (16-byte) 3DES key, as the loyalty spec uses for the TMK, PIN key and MAC key.
pub type Key16 = [u8; 16];

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("3DES data must be a multiple of 8 bytes, got {0}")]
    BlockLength(usize),
    #[error("key must be 32 hex characters (a double-length 3DES key), got {0} characters")]
    KeyLength(usize),
    #[error("working key must be 32 or 64 hex characters, got {0}")]
    WorkingKeyLength(usize),
    #[error("{0} is not hexadecimal")]
    NotHex(&'static str),
    #[error("PIN must be 4 to 12 digits")]
    BadPin,
    #[error("card number must be at least 13 digits for a PIN block")]
    BadPan,
    #[error("PIN block is not a valid ISO 9564 format-0 block for this card")]
    BadPinBlock,
}

fn cipher(key: &Key16) -> TdesEde2 {
    // `new` cannot fail for a fixed 16-byte key; `TdesEde2` takes exactly 16 bytes.
    TdesEde2::new(GenericArray::from_slice(key))
}

/// 3DES (EDE2) ECB encryption, no padding: `data` must be whole 8-byte blocks.
pub fn tdes_ecb_encrypt(key: &Key16, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if data.len() % 8 != 0 {
        return Err(CryptoError::BlockLength(data.len()));
    }
    let c = cipher(key);
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(8) {
        c.encrypt_block(GenericArray::from_mut_slice(block));
    }
    Ok(out)
}

/// 3DES (EDE2) ECB decryption, no padding.
pub fn tdes_ecb_decrypt(key: &Key16, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if data.len() % 8 != 0 {
        return Err(CryptoError::BlockLength(data.len()));
    }
    let c = cipher(key);
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(8) {
        c.decrypt_block(GenericArray::from_mut_slice(block));
    }
    Ok(out)
}

/// Parse a double-length key written as 32 hex characters (surrounding whitespace allowed).
pub fn parse_key_hex(text: &str) -> Result<Key16, CryptoError> {
    let t = text.trim();
    if t.len() != 32 {
        return Err(CryptoError::KeyLength(t.len()));
    }
    let v = hex::decode(t).map_err(|_| CryptoError::NotHex("key"))?;
    let mut k = [0u8; 16];
    k.copy_from_slice(&v);
    Ok(k)
}

/// The clear keys carried by a check-in `workingKey`. `Debug` prints nothing of them.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkingKeys {
    pub pin: Key16,
    pub mac: Option<Key16>,
}

impl std::fmt::Debug for WorkingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkingKeys(<redacted>)")
    }
}

/// Decrypt a check-in `workingKey` under the terminal master key: 32 hex = PIN key, 64 hex = PIN key then
/// MAC key, each a double-length key encrypted with 3DES-ECB under the TMK.
pub fn unwrap_working_key(tmk: &Key16, working_key_hex: &str) -> Result<WorkingKeys, CryptoError> {
    let t = working_key_hex.trim();
    if t.len() != 32 && t.len() != 64 {
        return Err(CryptoError::WorkingKeyLength(t.len()));
    }
    let enc = hex::decode(t).map_err(|_| CryptoError::NotHex("working key"))?;
    let clear = tdes_ecb_decrypt(tmk, &enc)?;
    let mut pin = [0u8; 16];
    pin.copy_from_slice(&clear[..16]);
    let mac = if clear.len() == 32 {
        let mut m = [0u8; 16];
        m.copy_from_slice(&clear[16..]);
        Some(m)
    } else {
        None
    };
    Ok(WorkingKeys { pin, mac })
}

/// The inverse of [`unwrap_working_key`], for the simulator's check-in: upper-case hex.
pub fn wrap_working_key(tmk: &Key16, keys: &WorkingKeys) -> String {
    let mut clear = keys.pin.to_vec();
    if let Some(m) = keys.mac {
        clear.extend_from_slice(&m);
    }
    // The length is 16 or 32, whole blocks, so this cannot fail; fall back to empty rather than panic.
    tdes_ecb_encrypt(tmk, &clear).map(hex::encode_upper).unwrap_or_default()
}

/// The PAN field of a format-0 block: `0000` + the 12 rightmost digits excluding the check digit.
fn pan_field(pan: &str) -> Result<[u8; 8], CryptoError> {
    if pan.len() < 13 || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptoError::BadPan);
    }
    let body = &pan[..pan.len() - 1];
    let twelve = &body[body.len() - 12..];
    let mut nibbles = [0u8; 16];
    for (i, b) in twelve.bytes().enumerate() {
        nibbles[4 + i] = b - b'0';
    }
    Ok(pack(&nibbles))
}

fn pack(n: &[u8; 16]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for i in 0..8 {
        out[i] = (n[2 * i] << 4) | n[2 * i + 1];
    }
    out
}

/// ISO 9564 format-0 clear PIN block: (`0`, PIN length, PIN digits, `F` padding) XOR the PAN field.
pub fn pin_block_format0(pin: &str, pan: &str) -> Result<[u8; 8], CryptoError> {
    if !(4..=12).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptoError::BadPin);
    }
    let mut nibbles = [0x0Fu8; 16];
    nibbles[0] = 0;
    nibbles[1] = pin.len() as u8;
    for (i, b) in pin.bytes().enumerate() {
        nibbles[2 + i] = b - b'0';
    }
    let pin_field = pack(&nibbles);
    let pan_f = pan_field(pan)?;
    let mut out = [0u8; 8];
    for i in 0..8 {
        out[i] = pin_field[i] ^ pan_f[i];
    }
    Ok(out)
}

/// Recover the PIN digits from a clear format-0 block (the simulator's side of the check).
pub fn pin_from_block_format0(block: &[u8; 8], pan: &str) -> Result<String, CryptoError> {
    let pan_f = pan_field(pan)?;
    let mut nibbles = [0u8; 16];
    for i in 0..8 {
        let b = block[i] ^ pan_f[i];
        nibbles[2 * i] = b >> 4;
        nibbles[2 * i + 1] = b & 0x0F;
    }
    let len = nibbles[1] as usize;
    if nibbles[0] != 0 || !(4..=12).contains(&len) {
        return Err(CryptoError::BadPinBlock);
    }
    let digits = &nibbles[2..2 + len];
    if digits.iter().any(|&d| d > 9) || nibbles[2 + len..].iter().any(|&d| d != 0x0F) {
        return Err(CryptoError::BadPinBlock);
    }
    Ok(digits.iter().map(|d| char::from(b'0' + d)).collect())
}

/// The `password` field: the format-0 block encrypted with 3DES-ECB under the PIN key, upper-case hex.
pub fn encrypt_pin_block(pin_key: &Key16, pin: &str, pan: &str) -> Result<String, CryptoError> {
    let block = pin_block_format0(pin, pan)?;
    Ok(hex::encode_upper(tdes_ecb_encrypt(pin_key, &block)?))
}

/// Decrypt a `password` field and return the PIN digits.
pub fn decrypt_pin_block(pin_key: &Key16, password_hex: &str, pan: &str) -> Result<String, CryptoError> {
    if password_hex.len() != 16 {
        return Err(CryptoError::BadPinBlock);
    }
    let enc = hex::decode(password_hex).map_err(|_| CryptoError::NotHex("PIN block"))?;
    let clear = tdes_ecb_decrypt(pin_key, &enc)?;
    let mut block = [0u8; 8];
    block.copy_from_slice(&clear);
    pin_from_block_format0(&block, pan)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with python3 driving the OpenSSL 3.0 CLI:
    //   openssl enc -des-ede -K <key hex> -nopad -nosalt   (2-key 3DES EDE, ECB)
    // and the format-0 block by hand in python (PIN field XOR PAN field, see below).
    const TMK: &str = "0123456789ABCDEFFEDCBA9876543210";
    const PIN_KEY: &str = "11223344556677888877665544332211";
    const MAC_KEY: &str = "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8";
    const PIN_KEY_UNDER_TMK: &str = "3EB3B72576BBBE832532DF5DD75880D3";
    const MAC_KEY_UNDER_TMK: &str = "720D29FF7CEE3BD9BD6DCBEEC616646C";

    #[test]
    fn known_answer_3des() {
        // The classic 2-key 3DES vector: K = 0123456789ABCDEF FEDCBA9876543210, P = 0123456789ABCDEF.
        let k = parse_key_hex(TMK).unwrap();
        let c = tdes_ecb_encrypt(&k, &hex::decode("0123456789ABCDEF").unwrap()).unwrap();
        assert_eq!(hex::encode_upper(&c), "1A4D672DCA6CB335");
        assert_eq!(tdes_ecb_decrypt(&k, &c).unwrap(), hex::decode("0123456789ABCDEF").unwrap());
        assert_eq!(tdes_ecb_encrypt(&k, &[0u8; 7]), Err(CryptoError::BlockLength(7)));
    }

    #[test]
    fn working_key_unwraps_under_the_tmk() {
        let tmk = parse_key_hex(TMK).unwrap();
        let one = unwrap_working_key(&tmk, PIN_KEY_UNDER_TMK).unwrap();
        assert_eq!(hex::encode_upper(one.pin), PIN_KEY);
        assert_eq!(one.mac, None);
        let both = unwrap_working_key(&tmk, &format!("{PIN_KEY_UNDER_TMK}{MAC_KEY_UNDER_TMK}")).unwrap();
        assert_eq!(hex::encode_upper(both.pin), PIN_KEY);
        assert_eq!(both.mac.map(hex::encode_upper).as_deref(), Some(MAC_KEY));
        assert_eq!(wrap_working_key(&tmk, &both), format!("{PIN_KEY_UNDER_TMK}{MAC_KEY_UNDER_TMK}"));
        assert_eq!(unwrap_working_key(&tmk, "ABCD"), Err(CryptoError::WorkingKeyLength(4)));
        assert!(unwrap_working_key(&tmk, &"Z".repeat(32)).is_err());
        assert!(!format!("{both:?}").contains("1122"));
    }

    #[test]
    fn pin_block_format0_worked_example() {
        // PIN 123456 -> PIN field 06123456FFFFFFFF; PAN 6222021234567890123 -> drop check digit 3,
        // 12 rightmost = 123456789012 -> PAN field 0000123456789012; XOR = 06122662A9876FED.
        let b = pin_block_format0("123456", "6222021234567890123").unwrap();
        assert_eq!(hex::encode_upper(b), "06122662A9876FED");
        assert_eq!(pin_from_block_format0(&b, "6222021234567890123").unwrap(), "123456");
        assert_eq!(pin_block_format0("12a4", "6222021234567890123"), Err(CryptoError::BadPin));
        assert_eq!(pin_block_format0("123", "6222021234567890123"), Err(CryptoError::BadPin));
        assert_eq!(pin_block_format0("1234", "622202123456"), Err(CryptoError::BadPan));
        // A block read against another card does not parse back.
        assert!(pin_from_block_format0(&b, "6222029999999999993").is_err());
    }

    #[test]
    fn encrypted_pin_block_matches_openssl() {
        // openssl enc -des-ede -K 11223344556677888877665544332211 -nopad -nosalt on 06122662A9876FED.
        let k = parse_key_hex(PIN_KEY).unwrap();
        let hexed = encrypt_pin_block(&k, "123456", "6222021234567890123").unwrap();
        assert_eq!(hexed, "5B1C6693FCEA1913");
        assert_eq!(decrypt_pin_block(&k, &hexed, "6222021234567890123").unwrap(), "123456");
        let other = parse_key_hex(TMK).unwrap();
        assert!(decrypt_pin_block(&other, &hexed, "6222021234567890123").is_err());
    }
}
