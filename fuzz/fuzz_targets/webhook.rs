//! The webhook reader on arbitrary bytes: the ingest check (`peek_event`), the applier's
//! reading (`read`) and the object models must never panic, and whatever the full JSON
//! parser accepts the ingest check must accept too, naming the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use partnerstack::{models, webhook};
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    // The handler refuses invalid UTF-8 before anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let peeked = webhook::peek_event(text);
    if let webhook::Reading::Object { kind, object } = webhook::read(text) {
        let _ = models::check(kind.entity, &object);
    }
    if let Ok(parsed) = serde_json::from_str::<Map<String, Value>>(text) {
        let peeked = peeked.expect("an object the full parser reads must pass the ingest check");
        assert_eq!(peeked, webhook::event_name(&parsed));
    }
});
