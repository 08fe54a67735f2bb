//! CAR import into an in-memory store, and the DAG link decoders it runs
//! on each block: any bytes must import, or fail with an error, and
//! whatever was stored must match its CID.
#![no_main]

use futures::StreamExt;
use garage_ipfs::store::{BlockStore, MemBlockStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = MemBlockStore::default();
        let _ = garage_ipfs::dag::import_car(&store, data, |_| ()).await;
        let stored: Vec<_> = store.list().collect().await;
        for mh in stored {
            let cid = garage_ipfs::cid::raw_cid(mh.expect("memory lists"));
            let block = store.get(&cid).await.expect("memory reads");
            let block = block.expect("a listed block is there");
            garage_ipfs::cid::verify(&cid, &block).expect("stored blocks match their CID");
        }
    });
    // The link decoders on raw bytes, under each codec they handle.
    for codec in [0x70, 0x71, 0x55] {
        let cid = cid::Cid::new_v1(codec, multihash());
        let _ = garage_ipfs::ipld::links(&cid, data);
    }
});

fn multihash() -> cid::multihash::Multihash<64> {
    cid::multihash::Multihash::wrap(0x12, &[0; 32]).expect("sha2-256 digest size")
}
