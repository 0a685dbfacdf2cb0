//! Fuzz target `usage_json`: the harness is [`scopegate::fuzzing::usage_json`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::usage_json(data));
