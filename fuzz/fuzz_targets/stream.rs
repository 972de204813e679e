#![no_main]
//! See `backends::fuzzing::stream` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| backends::fuzzing::stream(data));
