#![no_main]
//! See `backends::fuzzing::vxlan` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| backends::fuzzing::vxlan(data));
