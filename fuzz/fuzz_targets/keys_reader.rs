//! Fuzz target `keys_reader`: the harness is [`scopegate::fuzzing::keys_reader`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::keys_reader(data));
