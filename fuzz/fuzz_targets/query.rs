//! Fuzz target `query`: the harness is [`scopegate::fuzzing::query`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::query(data));
