#![no_main]
//! See `switch::fuzzing::vlan` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switch::fuzzing::vlan(data));
