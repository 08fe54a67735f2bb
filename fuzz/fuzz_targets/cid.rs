//! CID parsing: text (any multibase, CIDv0 and v1), binary, and datastore
//! keys. Whatever parses must print and parse back to itself.
#![no_main]

use garage_ipfs::cid as cidutil;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cid) = cidutil::parse(text) {
            let again = cidutil::parse(&cid.to_string()).expect("a printed CID parses");
            assert_eq!(again, cid);
            let _ = cidutil::check_supported(&cid);
        }
        if let Ok(mh) = cidutil::from_dskey(text) {
            assert_eq!(cidutil::from_dskey(&cidutil::dskey(&mh)).unwrap(), mh);
        }
    }
    if let Ok(cid) = cid::Cid::try_from(data) {
        let _ = cidutil::check_supported(&cid);
        let _ = cidutil::verify(&cid, data);
    }
});
