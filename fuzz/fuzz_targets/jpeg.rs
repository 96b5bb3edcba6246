#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| brankas_fuzz::jpeg(data));
