//! Fuzzes the contract-3 frame decoder: `cargo +nightly fuzz run decode` (from `fuzz/`).
//! New interesting inputs land in `corpus/decode/`; commit the small ones, they are
//! replayed by `switchyard-proto`'s unit tests on every normal test run.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard_proto::wire::exercise_decoder(data);
});
