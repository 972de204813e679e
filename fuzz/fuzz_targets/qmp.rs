#![no_main]
//! See `ctl::fuzzing::qmp` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ctl::fuzzing::qmp(data));
