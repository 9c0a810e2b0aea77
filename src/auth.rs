//! Shared secrets: URL tokens, bearer tokens and HMAC signing keys; the API's callers and
//! their scopes.
//!
//! Tokens are compared in constant time against every configured token (several are
//! active during a rotation). Both sides are hashed first, so neither the content nor the
//! length of a configured token leaks through timing, and a configured token may be given
//! as its hash alone.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// A set of accepted tokens, held as SHA-256 digests.
#[derive(Clone)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.digests.len())
    }
}

impl TokenSet {
    pub fn new(tokens: &[SecretString]) -> Self {
        Self {
            digests: tokens
                .iter()
                .map(|t| sha256(t.expose_secret().as_bytes()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// True when `presented` equals one of the tokens. Every token is compared, match or not.
    pub fn verify(&self, presented: &str) -> bool {
        let digest = sha256(presented.as_bytes());
        let mut matched = subtle::Choice::from(0);
        for d in &self.digests {
            matched |= d.ct_eq(&digest);
        }
        matched.into()
    }
}

crate::text_enum! {
    /// What an API client may do. Scopes are independent: a client lists each it needs.
    pub enum Scope {
        /// Every `GET` under `/v1`.
        Read = "read",
        /// Customer and transaction writes (`POST`, `PATCH`, `DELETE` of `/v1/customers`
        /// and `/v1/transactions`).
        Write = "write",
        /// Everything else that changes state: retrying writes, replaying the relay,
        /// starting syncs.
        Admin = "admin",
    }
}

/// Who made an API request, as its bearer token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Where the caller sits in the [`Callers`] table: tells callers apart (long-poll
    /// bounds are per caller) without their names.
    pub slot: usize,
    /// The client's name; `None` for an unnamed token (`api.tokens`).
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
}

impl Caller {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// The name, or "an unnamed token", for messages and logs.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("client {name:?}"),
            None => "an unnamed token (api.tokens)".to_string(),
        }
    }
}

/// Every caller the API knows, by the SHA-256 of its token: the named clients, then each
/// unnamed token with the `read` scope alone (`ApiConfig::callers`).
#[derive(Clone, Default)]
pub struct Callers {
    digests: Vec<[u8; 32]>,
    callers: Vec<Caller>,
}

impl std::fmt::Debug for Callers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Callers({} tokens)", self.digests.len())
    }
}

impl Callers {
    /// Adds the caller with the token whose SHA-256 is `digest` (`name`: `None` for an
    /// unnamed token).
    pub fn add(&mut self, name: Option<String>, digest: [u8; 32], scopes: Vec<Scope>) {
        self.callers.push(Caller {
            slot: self.callers.len(),
            name,
            scopes,
        });
        self.digests.push(digest);
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The caller whose token `presented` is. Every digest is compared, match or not, and
    /// the match is picked without a branch on any comparison.
    pub fn verify(&self, presented: &str) -> Option<&Caller> {
        let digest = sha256(presented.as_bytes());
        // 0: none; i + 1: slot i.
        let mut found = 0u32;
        for (i, d) in self.digests.iter().enumerate() {
            let slot = u32::try_from(i + 1).unwrap_or(u32::MAX);
            found.conditional_assign(&slot, d.ct_eq(&digest));
        }
        let index = usize::try_from(found).ok()?.checked_sub(1)?;
        self.callers.get(index)
    }
}

/// HMAC-SHA256 keys for deliveries signed by a relay or gateway.
#[derive(Clone)]
pub struct SigningKeys {
    keys: Vec<SecretString>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeys({} keys)", self.keys.len())
    }
}

impl SigningKeys {
    pub fn new(keys: &[SecretString]) -> Self {
        Self {
            keys: keys.to_vec(),
        }
    }

    /// Signing is required only when keys are configured.
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks a signature header value (hex or base64 of HMAC-SHA256 over `body`,
    /// optionally prefixed `sha256=`) against every key.
    pub fn verify(&self, body: &[u8], header: &str) -> bool {
        let Some(presented) = decode_signature(header) else {
            return false;
        };
        let mut matched = false;
        for key in &self.keys {
            let mut mac = hmac(key);
            mac.update(body);
            matched |= mac.verify_slice(&presented).is_ok();
        }
        matched
    }
}

fn hmac(key: &SecretString) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length")
}

fn decode_signature(header: &str) -> Option<Vec<u8>> {
    let value = header.trim();
    let value = value.strip_prefix("sha256=").unwrap_or(value);
    let bytes = if value.len() == 64 {
        hex::decode(value).ok()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?
    };
    (bytes.len() == 32).then_some(bytes)
}

/// A Standard Webhooks signing secret (`whsec_` and the base64 of 24 to 64 random
/// bytes), as the relay signs with it.
#[derive(Clone)]
pub struct WebhookSecret {
    key: secrecy::SecretSlice<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// The prefix of a Standard Webhooks secret.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

impl WebhookSecret {
    /// Reads `whsec_<base64>` (padding optional, as the reference libraries accept);
    /// the error says what is wrong without repeating the secret.
    pub fn parse(secret: &str) -> Result<WebhookSecret, String> {
        let encoded = secret
            .trim()
            .strip_prefix(WEBHOOK_SECRET_PREFIX)
            .ok_or_else(|| format!("must start with {WEBHOOK_SECRET_PREFIX}"))?;
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let key = engine
            .decode(encoded)
            .map_err(|_| format!("the part after {WEBHOOK_SECRET_PREFIX} is not base64"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "must encode 24 to 64 random bytes, not {}",
                key.len()
            ));
        }
        Ok(WebhookSecret { key: key.into() })
    }

    /// The `webhook-signature` header value for a message: `v1,` and the base64 of
    /// HMAC-SHA256 over `{id}.{timestamp}.{body}` (the Standard Webhooks scheme).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose_secret())
            .expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let signature = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(signature)
        )
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature header value for `body` under `key` (hex, `sha256=` prefixed).
    fn sign(key: &SecretString, body: &[u8]) -> String {
        let mut mac = hmac(key);
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect()
    }

    #[test]
    fn any_active_token_is_accepted() {
        let set = TokenSet::new(&secrets(&["old-token-0123456789", "new-token-0123456789"]));
        assert!(set.verify("old-token-0123456789"));
        assert!(set.verify("new-token-0123456789"));
        assert!(!set.verify("new-token-012345678"));
        assert!(!set.verify(""));
        assert!(!TokenSet::new(&[]).verify(""));
    }

    #[test]
    fn signatures_in_hex_and_base64_verify_and_tampering_fails() {
        let keys = secrets(&["signing-secret-0123456789"]);
        let set = SigningKeys::new(&keys);
        let body = br#"{"event":"customer.created"}"#;
        let header = sign(&keys[0], body);
        assert!(set.verify(body, &header));
        let raw = hex::decode(header.trim_start_matches("sha256=")).unwrap();
        assert!(set.verify(body, &hex::encode(&raw)));
        assert!(set.verify(
            body,
            &base64::engine::general_purpose::STANDARD.encode(&raw)
        ));
        assert!(!set.verify(br#"{"event":"customer.deleted"}"#, &header));
        assert!(!set.verify(body, "sha256=00"));
        assert!(!set.verify(body, ""));
        let other = SigningKeys::new(&secrets(&["another-secret-0123456789"]));
        assert!(!other.verify(body, &header));
    }

    #[test]
    fn standard_webhooks_signatures_match_the_specifications_test_vectors() {
        // From the Standard Webhooks reference libraries' own tests (Python/JS/Go, and Rust).
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert_ne!(
            secret.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367554, b"{}"),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn webhook_secrets_are_checked_and_never_shown() {
        for (bad, why) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
            ("whsec_not base64!", "not base64"),
            ("whsec_c2hvcnQ=", "24 to 64"),
        ] {
            let err = WebhookSecret::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{secret:?}"), "WebhookSecret([REDACTED])");
    }
}
