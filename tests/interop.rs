//! Interoperability: a device client written from docs/protocol.md alone, in Python with the
//! standard Hawk library `mohawk`, runs against the real server binary.
//!
//! Needs python3 and mohawk (installed with pip when missing). Without them the test says so
//! loudly and passes, unless WHERESMYFOX_REQUIRE_INTEROP is set (as in .ci/run), where it fails.

use std::process::Command;

fn python_has_mohawk() -> bool {
    Command::new("python3")
        .args(["-c", "import mohawk"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_python_mohawk_device_client_works_from_the_protocol_document() {
    let required = std::env::var_os("WHERESMYFOX_REQUIRE_INTEROP").is_some();
    if !python_has_mohawk() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "mohawk"])
            .status();
    }
    if !python_has_mohawk() {
        let message = "SKIPPED: python3 with mohawk is not available (pip install mohawk); \
                       the Python interoperability test did not run";
        assert!(!required, "{message}");
        eprintln!("\n*** {message} ***\n");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/run.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("WHERESMYFOX_BIN", env!("CARGO_BIN_EXE_wheresmyfox"))
        .output()
        .expect("run tests/interop/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "interop test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
