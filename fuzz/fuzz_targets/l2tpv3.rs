#![no_main]
//! See `backends::fuzzing::l2tpv3` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| backends::fuzzing::l2tpv3(data));
