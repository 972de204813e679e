#![no_main]
//! See `ctl::fuzzing::cli` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ctl::fuzzing::cli(data));
