#![no_main]
//! See `backends::fuzzing::virtio_chain` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| backends::fuzzing::virtio_chain(data));
