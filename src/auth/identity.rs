//! Who is calling over HTTP. With `auth.mode = "bearer"`, `/mcp` needs
//! `Authorization: Bearer <token>`: either a static dev token from `auth.dev_tokens` (local use)
//! or a JWT from `auth.issuer`, checked for signature (keys from the issuer's JWKS, fetched and
//! cached, refetched when a token names an unknown key), issuer, audience, expiry and scope. The
//! `sub` claim is the principal, and it must be in the policies. The token itself goes nowhere:
//! only the principal's name travels with the request.
//!
//! Failures follow the MCP authorization spec: 401 with `WWW-Authenticate: Bearer` naming the
//! protected-resource metadata (`/.well-known/oauth-protected-resource`), 403
//! `insufficient_scope` when the token lacks `auth.scope`. With `auth.mode = "none"` (the local
//! default) every caller is `serve.principal`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

use crate::config::AuthConfig;
use crate::error::{Error, Result};

/// The authenticated caller of one HTTP request (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: String,
    /// When the credential stops being valid (a JWT's `exp`, Unix seconds); `None` for dev
    /// tokens and unauthenticated local use. A console session ends no later.
    pub expires_at: Option<u64>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token: 401 without an error code.
    Missing,
    /// A token that is not valid: 401 `invalid_token`.
    Invalid(String),
    /// A valid token lacking the scope: 403 `insufficient_scope`.
    InsufficientScope(String),
}

/// Checks bearer tokens.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// Dev tokens by their SHA-256, with their principals. Every one is compared, in constant
    /// time, so how long a wrong token takes to refuse says nothing about the right ones.
    dev_tokens: Vec<([u8; 32], String)>,
    issuer: String,
    audience: String,
    scope: String,
    jwks_url: String,
    known: Arc<crate::auth::Policies>,
    keys: RwLock<Keys>,
    http: reqwest::Client,
}

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

/// Least time between two JWKS fetches caused by unknown key ids.
const REFETCH_AFTER: Duration = Duration::from_secs(30);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens.
        f.debug_struct("Authenticator")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("dev_tokens", &self.inner.dev_tokens.len())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for `auth`, or `None` when `auth.mode` is "none".
    pub fn new(auth: &AuthConfig, policies: Arc<crate::auth::Policies>) -> Result<Option<Self>> {
        if auth.mode == "none" {
            return Ok(None);
        }
        let mut dev_tokens: Vec<([u8; 32], String)> = Vec::new();
        for (principal, token) in &auth.dev_tokens {
            let problem = if !policies.knows(principal) {
                Some(format!("no principal {principal:?} in the policies"))
            } else if token.expose().trim().is_empty() {
                Some(format!("the token of {principal:?} is empty"))
            } else {
                let d = digest(token.expose());
                if let Some((_, other)) = dev_tokens.iter().find(|(seen, _)| *seen == d) {
                    Some(format!("{other:?} and {principal:?} have the same token"))
                } else {
                    dev_tokens.push((d, principal.clone()));
                    None
                }
            };
            if let Some(p) = problem {
                return Err(Error::Config(vec![format!("auth.dev_tokens: {p}")]));
            }
        }
        let jwks_url = if !auth.jwks_url.is_empty() {
            auth.jwks_url.clone()
        } else if !auth.issuer.is_empty() {
            format!(
                "{}/.well-known/jwks.json",
                auth.issuer.trim_end_matches('/')
            )
        } else {
            String::new()
        };
        Ok(Some(Authenticator {
            inner: Arc::new(Inner {
                dev_tokens,
                issuer: auth.issuer.clone(),
                audience: auth.audience.clone(),
                scope: auth.scope.clone(),
                jwks_url,
                known: policies,
                keys: RwLock::new(Keys::default()),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| Error::Config(vec![format!("http client: {e}")]))?,
            }),
        }))
    }

    /// The issuer tokens come from, if any (for the protected-resource metadata).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The scope a token must carry ("" = none).
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// The caller an `Authorization` header value proves, or why not.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Refusal> {
        let token = match authorization {
            None => return Err(Refusal::Missing),
            Some(h) => match h.split_once(' ') {
                Some((scheme, t))
                    if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() =>
                {
                    t.trim()
                }
                _ => {
                    return Err(Refusal::Invalid(
                        "expected `Authorization: Bearer <token>`".into(),
                    ));
                }
            },
        };
        let presented = digest(token);
        let mut dev = None;
        for (d, principal) in &self.inner.dev_tokens {
            if aws_lc_rs::constant_time::verify_slices_are_equal(d, &presented).is_ok() {
                dev = Some(principal);
            }
        }
        if let Some(principal) = dev {
            return Ok(Caller {
                principal: principal.clone(),
                expires_at: None,
            });
        }
        if self.inner.jwks_url.is_empty() {
            return Err(Refusal::Invalid("unknown token".into()));
        }
        let claims = self.verify(token).await?;
        if !self.inner.scope.is_empty() {
            let scopes: Vec<&str> = claims
                .scope
                .as_deref()
                .map(|s| s.split_whitespace().collect())
                .or_else(|| {
                    claims
                        .scp
                        .as_ref()
                        .map(|v| v.iter().map(String::as_str).collect())
                })
                .unwrap_or_default();
            if !scopes.contains(&self.inner.scope.as_str()) {
                return Err(Refusal::InsufficientScope(format!(
                    "the token lacks scope {:?}",
                    self.inner.scope
                )));
            }
        }
        if !self.inner.known.knows(&claims.sub) {
            return Err(Refusal::InsufficientScope(format!(
                "principal {:?} has no grants here",
                claims.sub
            )));
        }
        Ok(Caller {
            principal: claims.sub,
            expires_at: Some(claims.exp),
        })
    }

    async fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refusal::Invalid(format!("malformed token: {e}")))?;
        // RFC 7515 §4.1.11: a recipient must refuse a token naming extensions it does not
        // understand; millstream understands none.
        if let Some(crit) = header.crit.as_ref().filter(|c| !c.is_empty()) {
            return Err(Refusal::Invalid(format!(
                "the token requires header extensions this server does not support: {crit:?}"
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| Refusal::Invalid("the token names no key (kid)".into()))?;
        let jwk = match self.key(&kid).await? {
            Some(k) => k,
            None => return Err(Refusal::Invalid(format!("unknown signing key {kid:?}"))),
        };
        // A key published for encryption (or for signing only, not verifying) must not verify.
        use jsonwebtoken::jwk::{KeyOperations, PublicKeyUse};
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return Err(Refusal::Invalid(format!(
                "key {kid:?} is not a signing key (its `use` is not \"sig\")"
            )));
        }
        if jwk
            .common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
        {
            return Err(Refusal::Invalid(format!(
                "key {kid:?} may not verify signatures (its `key_ops` lack \"verify\")"
            )));
        }
        // The algorithm is the key's, never the token's choice (no `none`, no HMAC-with-a-
        // public-key confusion).
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse().ok())
            .unwrap_or(header.alg);
        if header.alg != alg {
            return Err(Refusal::Invalid(format!(
                "token algorithm {:?} does not match its key's {alg:?}",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| Refusal::Invalid(format!("unusable signing key {kid:?}: {e}")))?;
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        // A token not valid yet is not valid.
        v.validate_nbf = true;
        v.set_issuer(&[&self.inner.issuer]);
        v.set_audience(&[&self.inner.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| Refusal::Invalid(format!("invalid token: {e}")))
    }

    /// The key `kid` from the JWKS, fetching it when not cached or when the key is unknown
    /// (at most once per [`REFETCH_AFTER`], so bad tokens cannot flood the issuer).
    async fn key(&self, kid: &str) -> Result<Option<jsonwebtoken::jwk::Jwk>, Refusal> {
        {
            let keys = self.inner.keys.read().await;
            if let Some(k) = keys.set.as_ref().and_then(|s| s.find(kid)) {
                return Ok(Some(k.clone()));
            }
            if keys.fetched.is_some_and(|t| t.elapsed() < REFETCH_AFTER) {
                return Ok(None);
            }
        }
        let mut keys = self.inner.keys.write().await;
        if keys.fetched.is_none_or(|t| t.elapsed() >= REFETCH_AFTER) {
            keys.fetched = Some(Instant::now());
            match self.fetch().await {
                Ok(set) => keys.set = Some(set),
                Err(e) => {
                    tracing::warn!(url = %self.inner.jwks_url, error = %e, "fetching the issuer's keys");
                    if keys.set.is_none() {
                        return Err(Refusal::Invalid("the issuer's keys are unavailable".into()));
                    }
                }
            }
        }
        Ok(keys.set.as_ref().and_then(|s| s.find(kid)).cloned())
    }

    async fn fetch(&self) -> std::result::Result<JwkSet, String> {
        let resp = self
            .inner
            .http
            .get(&self.inner.jwks_url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?;
        resp.json::<JwkSet>().await.map_err(|e| e.to_string())
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn bearer(tokens: &[(&str, &str)]) -> Result<Option<Authenticator>> {
        let mut auth = crate::config::Config::load_from(None, vec![]).unwrap().auth;
        auth.mode = "bearer".into();
        auth.dev_tokens = tokens
            .iter()
            .map(|(p, t)| (p.to_string(), Secret::new(*t)))
            .collect();
        Authenticator::new(&auth, Arc::new(crate::auth::Policies::load("").unwrap()))
    }

    /// Dev tokens name their principal, and only the exact token does; a config that would make
    /// one token two principals, an empty token, or a token for nobody is refused at start.
    #[tokio::test]
    async fn dev_tokens_are_exact_distinct_and_for_known_principals() {
        let a = bearer(&[("maria@emea", "tok-maria"), ("alice@emea", "tok-alice")])
            .unwrap()
            .unwrap();
        let who = |t: &'static str| {
            let a = a.clone();
            async move {
                a.authenticate(Some(&format!("Bearer {t}")))
                    .await
                    .map(|c| c.principal)
                    .ok()
            }
        };
        assert_eq!(who("tok-maria").await.as_deref(), Some("maria@emea"));
        assert_eq!(who("tok-alice").await.as_deref(), Some("alice@emea"));
        for wrong in ["tok-mari", "tok-mariaa", "TOK-MARIA", "tok-alice tok-maria"] {
            assert_eq!(who(wrong).await, None, "{wrong}");
        }
        for (bad, want) in [
            (
                vec![("maria@emea", "same"), ("alice@emea", "same")],
                "the same token",
            ),
            (vec![("maria@emea", " ")], "is empty"),
            (vec![("mallory@nowhere", "x")], "no principal"),
        ] {
            let Err(e) = bearer(&bad) else {
                panic!("{bad:?} accepted")
            };
            let e = e.to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}
