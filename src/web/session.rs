//! Console sessions: who a browser is signed in as, in a signed cookie, and the CSRF token its
//! actions must carry.
//!
//! The cookie holds the principal, an expiry and a random nonce, signed with HMAC-SHA256 under
//! `console.session_key`: any replica holding the key can check it, none has to remember it.
//! It is `HttpOnly` (scripts cannot read it), `SameSite=Strict` (other sites' pages do not send
//! it) and `Secure` (unless `console.secure_cookie = false`), scoped to `/console`.
//!
//! CSRF: every request that changes something (`POST`) must carry `X-CSRF-Token`, an HMAC of
//! the session's nonce that the page received in a `<meta>` tag, and a same-origin `Origin`
//! when the browser sends one. Signing in, which has no session yet, checks the `Origin`.
//! Signing out forgets the nonce on this replica until the cookie would have expired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::HmacKey;

/// The session cookie's name.
pub const COOKIE: &str = "millstream_console";

/// Signs and checks session cookies and CSRF tokens.
#[derive(Clone)]
pub struct Sessions {
    key: HmacKey,
    lifetime: Duration,
    secure: bool,
    /// Nonces of sessions signed out here, with the time their cookie expires.
    ended: Arc<Mutex<HashMap<String, u64>>>,
}

/// A checked session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub principal: String,
    nonce: String,
    pub expires: u64,
}

impl Session {
    pub fn expired(&self) -> bool {
        self.expires <= now()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sessions {
    /// Sessions signed with `secret` (a random key when empty), lasting `lifetime`.
    pub fn new(secret: &str, lifetime: Duration, secure: bool) -> Sessions {
        Sessions {
            key: if secret.is_empty() {
                HmacKey::random()
            } else {
                HmacKey::new(secret.as_bytes())
            },
            lifetime,
            secure,
            ended: Arc::default(),
        }
    }

    /// A new session for `principal`, ending after the configured lifetime or at `not_after`
    /// (Unix seconds: the credential's own expiry), whichever is sooner; the `Set-Cookie` value.
    pub fn start(&self, principal: &str, not_after: Option<u64>) -> (Session, String) {
        let mut nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        let session = Session {
            principal: principal.to_string(),
            nonce: hex::encode(nonce),
            expires: (now() + self.lifetime.as_secs()).min(not_after.unwrap_or(u64::MAX)),
        };
        let body = format!(
            "{}.{}.{}",
            hex::encode(principal),
            session.expires,
            session.nonce
        );
        let signature = self.key.digest_hex(format!("session|{body}").as_bytes());
        let max_age = session.expires.saturating_sub(now());
        let cookie = self.cookie(&format!("{body}.{signature}"), max_age);
        (session, cookie)
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        )
    }

    /// The `Set-Cookie` value that ends `session` in the browser (and here, at once).
    pub fn end(&self, session: &Session) -> String {
        let mut ended = self.ended.lock().expect("poisoned");
        let t = now();
        ended.retain(|_, expires| *expires > t);
        ended.insert(session.nonce.clone(), session.expires);
        self.cookie("", 0)
    }

    /// The session a `Cookie` header carries, if it is one this key signed, unexpired and not
    /// signed out.
    pub fn check(&self, cookie_header: Option<&str>) -> Option<Session> {
        let value = cookie_header?
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, v)| v)?;
        let (body, signature) = value.rsplit_once('.')?;
        if !self
            .key
            .verify_hex(format!("session|{body}").as_bytes(), signature)
        {
            return None;
        }
        let mut parts = body.split('.');
        let principal = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
        let expires: u64 = parts.next()?.parse().ok()?;
        let nonce = parts.next()?.to_string();
        let session = Session {
            principal,
            nonce,
            expires,
        };
        if parts.next().is_some() || session.expired() {
            return None;
        }
        if self
            .ended
            .lock()
            .expect("poisoned")
            .contains_key(&session.nonce)
        {
            return None;
        }
        Some(session)
    }

    /// The CSRF token of `session` (what its pages send back on actions).
    pub fn csrf(&self, session: &Session) -> String {
        self.key
            .digest_hex(format!("csrf|{}", session.nonce).as_bytes())
    }

    /// Whether `presented` is `session`'s CSRF token (compared in constant time).
    pub fn csrf_ok(&self, session: &Session, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| {
            self.key
                .verify_hex(format!("csrf|{}", session.nonce).as_bytes(), p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new("", Duration::from_secs(3600), true)
    }

    fn cookie_value(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn a_signed_session_round_trips_and_a_tampered_one_does_not() {
        let s = sessions();
        let (session, set) = s.start("maria@emea", None);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.contains("Secure") && set.contains("Path=/console"));
        let cookie = cookie_value(&set);
        assert_eq!(
            s.check(Some(&format!("a=b; {cookie}"))),
            Some(session.clone())
        );
        // Another principal under the same signature.
        let forged = cookie.replacen(&hex::encode("maria@emea"), &hex::encode("local-dev"), 1);
        assert_eq!(s.check(Some(&forged)), None);
        // A longer expiry under the same signature.
        let later = cookie.replacen(
            &session.expires.to_string(),
            &(session.expires + 1000).to_string(),
            1,
        );
        assert_eq!(s.check(Some(&later)), None);
        // Another key (another deployment, or a restart with a random key).
        assert_eq!(sessions().check(Some(&cookie)), None);
        assert_eq!(s.check(None), None);
        assert_eq!(s.check(Some("millstream_console=garbage")), None);
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let s = sessions();
        let (a, _) = s.start("maria@emea", None);
        let (b, _) = s.start("maria@emea", None);
        let token = s.csrf(&a);
        assert!(s.csrf_ok(&a, Some(&token)));
        assert!(!s.csrf_ok(&b, Some(&token)));
        assert!(!s.csrf_ok(&a, None));
        assert!(!s.csrf_ok(&a, Some("00")));
    }

    #[test]
    fn a_signed_out_session_is_refused_and_an_expired_one_too() {
        let s = sessions();
        let (session, set) = s.start("alice@emea", None);
        let cookie = cookie_value(&set);
        let cleared = s.end(&session);
        assert!(cleared.contains("Max-Age=0"));
        assert_eq!(s.check(Some(&cookie)), None);
        let short = Sessions::new("", Duration::from_secs(0), true);
        let (_, set) = short.start("alice@emea", None);
        assert_eq!(short.check(Some(&cookie_value(&set))), None);
        // A session ends when the token it was opened with does, even if sooner.
        let (_, set) = s.start("alice@emea", Some(now() - 1));
        assert_eq!(s.check(Some(&cookie_value(&set))), None);
        assert!(set.contains("Max-Age=0"), "{set}");
        let (kept, set) = s.start("alice@emea", Some(now() + 600));
        assert_eq!(s.check(Some(&cookie_value(&set))), Some(kept));
        assert!(
            set.contains("Max-Age=600") || set.contains("Max-Age=599"),
            "{set}"
        );
    }
}
