//! Fuzz target `json_workspace`: the harness is [`scopegate::fuzzing::json_workspace`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::json_workspace(data));
