//! The owner's command object (body of `POST /1/devices/{id}/cmd`) and its validation.
//!
//! Properties: nothing panics; a command set that validates is non-empty, holds each kind at
//! most once in canonical order, and its wire form validates again to the same set (what the
//! device is sent is exactly what was accepted).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wheresmyfox::protocol::CommandSet;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = CommandSet::from_slice(data) else {
        return;
    };
    let entries = set.entries();
    assert!(!entries.is_empty());
    assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    let wire = set.to_json();
    let again = CommandSet::from_json(&wire).expect("the wire form of a valid set validates");
    assert_eq!(again, set);
    let bytes = serde_json::to_vec(&wire).expect("a JSON value serializes");
    assert_eq!(CommandSet::from_slice(&bytes).as_ref(), Ok(&set));
});
