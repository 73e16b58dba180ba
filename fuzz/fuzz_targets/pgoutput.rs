//! `cargo +nightly fuzz run pgoutput` (from the repository root): the decoder must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walhook::source::pgoutput::decode(bytes::Bytes::copy_from_slice(data));
});
