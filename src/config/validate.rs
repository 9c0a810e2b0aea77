//! Rules that relate settings to each other, checked once every value has been read (a
//! rule about a single value is on its field: `settings.rs`, `fields.rs`), and the
//! PartnerStack client's own checks of its section.

use std::collections::HashSet;

use secrecy::ExposeSecret;

use super::{Config, Verification};

/// A setting found wrong, by dotted path, and why.
pub(super) struct Invalid {
    pub(super) setting: String,
    pub(super) why: String,
}

/// The first rule `config` breaks, if any.
pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    let fail = |setting: &str, why: &str| {
        Err(Invalid {
            setting: setting.to_string(),
            why: why.to_string(),
        })
    };
    let webhooks = &config.webhooks;
    if webhooks.queue_bytes < webhooks.body_limit.get() {
        return fail(
            "webhooks.queue_bytes",
            "must hold at least one delivery of webhooks.body_limit bytes",
        );
    }
    if webhooks.appliers.get() >= config.database.max_connections as usize {
        return fail(
            "webhooks.appliers",
            "must be less than database.max_connections (each holds a connection while it \
             applies a batch)",
        );
    }
    if let Err((setting, why)) = config.partnerstack.validate() {
        return fail(&format!("partnerstack.{setting}"), &why);
    }
    if webhooks.verification == Verification::Fetch && config.partnerstack.credentials().is_none() {
        return fail(
            "webhooks.verification",
            "\"fetch\" needs PARTNERSTACK_PUBLIC_KEY and PARTNERSTACK_SECRET_KEY",
        );
    }
    let mut names = HashSet::new();
    for (i, endpoint) in config.relay.iter().enumerate() {
        if !names.insert(endpoint.name.as_str()) {
            let why = format!("name {:?} is used twice", endpoint.name);
            return fail(&format!("relay[{i}]"), &why);
        }
    }
    check_clients(config)
}

/// Every named API client has exactly one of `token` and `token_sha256`, its own name,
/// and a token no other client or unnamed token has (a token names one caller).
fn check_clients(config: &Config) -> Result<(), Invalid> {
    let fail = |i: usize, why: String| {
        Err(Invalid {
            setting: format!("api.clients[{i}]"),
            why,
        })
    };
    let mut names = HashSet::new();
    let mut digests: HashSet<[u8; 32]> = config
        .api
        .tokens
        .iter()
        .map(|t| crate::auth::sha256(t.expose_secret().as_bytes()))
        .collect();
    for (i, client) in config.api.clients.iter().enumerate() {
        if !names.insert(client.name.as_str()) {
            return fail(i, format!("name {:?} is used twice", client.name));
        }
        if client.token.is_some() && client.token_sha256.is_some() {
            return fail(
                i,
                format!(
                    "client {:?} sets both token and token_sha256; set one",
                    client.name
                ),
            );
        }
        let Some(digest) = client.digest() else {
            return fail(
                i,
                format!("client {:?} needs a token or a token_sha256", client.name),
            );
        };
        if !digests.insert(digest) {
            return fail(
                i,
                format!(
                    "client {:?} has the token of another client or of api.tokens",
                    client.name
                ),
            );
        }
    }
    Ok(())
}
