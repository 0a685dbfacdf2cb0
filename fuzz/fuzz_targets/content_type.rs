//! Fuzz target `content_type`: the harness is [`scopegate::fuzzing::content_type`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::content_type(data));
