#![no_main]
//! See `backends::fuzzing::memif_ring` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| backends::fuzzing::memif_ring(data));
