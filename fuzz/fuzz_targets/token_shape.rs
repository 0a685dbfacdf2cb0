//! Fuzz target `token_shape`: the harness is [`scopegate::fuzzing::token_shape`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::token_shape(data));
