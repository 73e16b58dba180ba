//! `walhook demo`, run as README tells a new user to: no config, exit 0, and the output shows
//! signed deliveries of every change, each with its headers, payload and "signature OK".

use crate::support::bin;

#[tokio::test]
async fn demo_shows_signed_deliveries_of_every_change_and_cleans_up() {
    let out = bin::command(["demo", "--timeout", "60"])
        .env_remove("WALHOOK_LOG")
        .output()
        .await
        .expect("run walhook demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walhook demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(stdout.matches("signature OK").count(), 5, "{stdout}");
    assert!(!stdout.contains("INVALID"), "{stdout}");
    for header in [
        "X-Archie-Event: INSERT",
        "X-Archie-Event: UPDATE",
        "X-Archie-Event: DELETE",
        "X-Archie-Delivery: evt_",
        "X-Archie-Signature: sha256=",
        "Content-Type: application/json",
    ] {
        assert!(stdout.contains(header), "no {header:?} in:\n{stdout}");
    }
    // The payload, pretty-printed, with numeric digits as Postgres has them.
    assert!(stdout.contains("\"total\": 99.50"), "{stdout}");
    assert!(stdout.contains("\"changed_fields\": [\n"), "{stdout}");
    assert!(
        stdout
            .contains("demo: 5 changes → 5 signed deliveries received, all signatures valid, in "),
        "{stdout}"
    );
    // The throw-away server's directory is removed.
    let dir = stdout
        .lines()
        .find_map(|l| l.split("; data directory ").nth(1))
        .and_then(|rest| rest.split(" (removed").next())
        .unwrap_or_else(|| panic!("no data directory line in:\n{stdout}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} still exists");
    // Nothing but warnings on stderr: the demo's output is the story.
    assert!(!stderr.contains("ERROR"), "{stderr}");
}
