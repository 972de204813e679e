#![no_main]
//! See `backends::fuzzing::vde` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| backends::fuzzing::vde(data));
