#![no_main]
//! See `backends::fuzzing::vhost_msg` for the property checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| backends::fuzzing::vhost_msg(data));
