//! The `cid` property of `garage_ipfs::fuzzing` (its docs say what holds),
//! under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| garage_ipfs::fuzzing::cid(data));
