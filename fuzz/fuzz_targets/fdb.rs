#![no_main]
//! See `switch::fuzzing::fdb` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switch::fuzzing::fdb(data));
