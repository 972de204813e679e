#![no_main]
//! See `switch::fuzzing::gso` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switch::fuzzing::gso(data));
