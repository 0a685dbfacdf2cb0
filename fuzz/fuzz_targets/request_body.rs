//! Fuzz target `request_body`: the harness is [`scopegate::fuzzing::request_body`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::request_body(data));
