//! The technician page's sign-in sessions: random 256-bit ids in a small server-side table with expiry.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use subtle::ConstantTimeEq;

/// A session lasts this long from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many live sessions; signing in beyond it ends the oldest.
pub const MAX_SESSIONS: usize = 16;
/// The cookie's name.
pub const COOKIE: &str = "posgate_session";

#[derive(Debug, Clone)]
pub struct Session {
    /// Sent back in `X-CSRF-Token` by every action; never in a cookie.
    pub csrf: String,
    expires: Instant,
    created: Instant,
}

/// The server-side table (the cookie holds only the id).
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Sessions {
    /// A new session at `now`: its id (for the cookie) and the session.
    pub fn create(&self, now: Instant) -> (String, Session) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, s| s.expires > now);
        while t.len() >= MAX_SESSIONS {
            let Some(oldest) = t.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone()) else { break };
            t.remove(&oldest);
        }
        let id = random_hex();
        let s = Session { csrf: random_hex(), expires: now + SESSION_TTL, created: now };
        t.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session named by `id`, if any.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, s| s.expires > now);
        t.get(id).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

impl Session {
    /// Whether `given` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, given: &str) -> bool {
        given.len() == self.csrf.len() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a base instant; the table is driven by offsets from it
    fn sessions_expire_are_bounded_and_check_csrf() {
        let t0 = Instant::now();
        let s = Sessions::default();
        let (id, sess) = s.create(t0);
        assert_eq!(id.len(), 64);
        assert!(s.get(&id, t0 + Duration::from_secs(60)).is_some());
        assert!(s.get(&id, t0 + SESSION_TTL + Duration::from_secs(1)).is_none());
        assert!(sess.csrf_ok(&sess.csrf.clone()) && !sess.csrf_ok("x") && !sess.csrf_ok(&"0".repeat(64)));
        let ids: Vec<String> = (0..MAX_SESSIONS + 3).map(|i| s.create(t0 + Duration::from_millis(i as u64)).0).collect();
        assert!(s.get(&ids[0], t0).is_none() && s.get(&ids[MAX_SESSIONS + 2], t0).is_some());
    }
}
