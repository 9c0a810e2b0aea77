//! Rules that relate settings to each other, checked once every value has been read (a
//! rule about a single value is on its field: `settings.rs`, `fields.rs`), and the
//! PartnerStack client's own checks of its section.

use std::collections::HashSet;

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
    Ok(())
}
