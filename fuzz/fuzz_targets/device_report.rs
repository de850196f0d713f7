//! The body of a device's `POST /1/cmd/{id}`: replies, position, `has_passcode`, `ack`.
//!
//! Properties: nothing panics; a report that parses lists its replies once per kind, in
//! canonical order; a position is only present with a successful track reply and is in range.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wheresmyfox::protocol::{DeviceReport, Kind, MAX_DEVICE_ERROR_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(report) = DeviceReport::from_slice(data) else {
        return;
    };
    assert!(report.replies.windows(2).all(|w| w[0].0 < w[1].0));
    for (_, outcome) in &report.replies {
        if let Some(error) = &outcome.error {
            assert!(error.len() <= MAX_DEVICE_ERROR_LEN);
        }
    }
    if let Some(position) = report.position {
        assert!(
            report
                .replies
                .iter()
                .any(|(kind, outcome)| *kind == Kind::Track && outcome.ok)
        );
        assert!((-90.0..=90.0).contains(&position.lat));
        assert!((-180.0..=180.0).contains(&position.lon));
    }
    let held = report.held_back();
    if report.ack.is_some() {
        assert!(held.is_empty());
    }
});
