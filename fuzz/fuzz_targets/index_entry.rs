//! Index values as read from the cluster: any bytes must decode to an
//! entry or an error, and a decoded entry must encode back to bytes that
//! decode to the same entry.
#![no_main]

use garage_ipfs::store::index::Entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(data) {
        let again = Entry::decode(&entry.encode()).expect("an encoded entry decodes");
        assert_eq!(again, entry);
    }
});
