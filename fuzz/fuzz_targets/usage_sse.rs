//! Fuzz target `usage_sse`: the harness is [`scopegate::fuzzing::usage_sse`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::usage_sse(data));
