//! The gRPC service `garage_ipfs.v1.Blockstore` (`proto/`).

use std::pin::Pin;

use bytes::Bytes;
use cid::Cid;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{ApiError, Backend, WriteAuth};
use crate::cid as cidutil;
use crate::store::{self, BlockStore};

/// The generated protobuf types and service traits.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("garage_ipfs.v1");
}

use pb::blockstore_server::{Blockstore, BlockstoreServer};

/// Blocks per `put_many` batch of a `PutMany` stream.
const PUT_MANY_BATCH: usize = 64;

/// Largest gRPC message: one 2 MiB block plus its envelope.
const MAX_MESSAGE: usize = cidutil::MAX_BLOCK_SIZE + 64 * 1024;

/// The service over a backend.
pub fn service<B: Backend>(backend: B, auth: WriteAuth) -> BlockstoreServer<Service<B>> {
    BlockstoreServer::new(Service { backend, auth })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// The service implementation.
pub struct Service<B> {
    backend: B,
    auth: WriteAuth,
}

fn status(e: impl Into<ApiError>) -> Status {
    e.into().to_status()
}

impl<B: Backend> Service<B> {
    fn ns(&self, name: &str) -> Result<B::Ns, Status> {
        self.backend.namespace(ns_name(name)).map_err(status)
    }

    fn check_write<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let value = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.auth.check(value).map_err(status)
    }
}

fn parse(cid: &str) -> Result<Cid, Status> {
    cidutil::parse(cid).map_err(|e| Status::invalid_argument(e.to_string()))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The namespace of a request: empty means `default`.
fn ns_name(name: &str) -> &str {
    if name.is_empty() {
        "default"
    } else {
        name
    }
}

#[tonic::async_trait]
impl<B: Backend> Blockstore for Service<B> {
    async fn open(
        &self,
        req: Request<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenResponse>, Status> {
        let name = ns_name(&req.get_ref().namespace).to_string();
        // A client that presents a token must hear now if it is wrong, not
        // at its first write; one without a token learns whether it may
        // write anyway (anonymous writes on loopback).
        let writable = if req.metadata().contains_key("authorization") {
            self.check_write(&req)?;
            true
        } else {
            self.auth.check(None).is_ok()
        };
        self.ns(&name)?;
        if !self.backend.is_registered(&name).await.map_err(status)? {
            return Err(Status::not_found(format!(
                "namespace {name:?} is not registered (create it with `garage-ipfs namespace create {name}`)"
            )));
        }
        Ok(Response::new(pb::OpenResponse {
            writable,
            max_block_size: cidutil::MAX_BLOCK_SIZE as u64,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn stat(
        &self,
        req: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let name = ns_name(&req.get_ref().namespace).to_string();
        let ns = self.ns(&name)?;
        if !self.backend.is_registered(&name).await.map_err(status)? {
            return Err(Status::not_found(format!(
                "namespace {name:?} is not registered"
            )));
        }
        let mut out = pb::StatResponse::default();
        let mut blocks = ns.list_sized();
        while let Some(item) = blocks.next().await {
            let (_, size) = item.map_err(status)?;
            out.blocks += 1;
            out.bytes += size;
        }
        Ok(Response::new(out))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.check_write(&req)?;
        let r = req.into_inner();
        let cid = parse(&r.cid)?;
        let size = r.data.len() as u64;
        self.ns(&r.namespace)?
            .put(&cid, Bytes::from(r.data))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PutResponse {
            cid: cid.to_string(),
            size,
        }))
    }

    async fn put_many(
        &self,
        req: Request<Streaming<pb::PutRequest>>,
    ) -> Result<Response<pb::PutManyResponse>, Status> {
        self.check_write(&req)?;
        let mut stream = req.into_inner();
        let mut out = pb::PutManyResponse::default();
        let mut batch: Vec<(Cid, Bytes)> = Vec::new();
        let mut ns = None;
        loop {
            let next = stream.next().await.transpose()?;
            let done = next.is_none();
            if let Some(r) = next {
                if ns.is_none() {
                    ns = Some(self.ns(&r.namespace)?);
                }
                match cidutil::parse(&r.cid) {
                    Ok(cid) => batch.push((cid, Bytes::from(r.data))),
                    Err(e) => out.failed.push(pb::PutFailure {
                        cid: r.cid,
                        error: e.to_string(),
                    }),
                }
            }
            if let (Some(ns), true) = (&ns, done || batch.len() >= PUT_MANY_BATCH) {
                let cids: Vec<Cid> = batch.iter().map(|(c, _)| *c).collect();
                match ns.put_many(std::mem::take(&mut batch)).await {
                    Ok(()) => out.stored += cids.len() as u64,
                    Err(store::Error::Partial { failed, .. }) => {
                        out.stored += (cids.len() - failed.len()) as u64;
                        out.failed
                            .extend(failed.into_iter().map(|(c, e)| pb::PutFailure {
                                cid: c.to_string(),
                                error: e,
                            }));
                    }
                    Err(e) => out.failed.extend(cids.iter().map(|c| pb::PutFailure {
                        cid: c.to_string(),
                        error: e.to_string(),
                    })),
                }
            }
            if done {
                return Ok(Response::new(out));
            }
        }
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = req.into_inner();
        let cid = parse(&r.cid)?;
        match self.ns(&r.namespace)?.get(&cid).await.map_err(status)? {
            Some(data) => Ok(Response::new(pb::GetResponse {
                cid: cid.to_string(),
                found: true,
                data: data.to_vec(),
            })),
            None => Err(Status::not_found(format!("block {cid} is not stored"))),
        }
    }

    type GetManyStream = BoxStream<pb::GetResponse>;

    async fn get_many(
        &self,
        req: Request<pb::GetManyRequest>,
    ) -> Result<Response<Self::GetManyStream>, Status> {
        let r = req.into_inner();
        let ns = self.ns(&r.namespace)?;
        let cids = r
            .cids
            .iter()
            .map(|c| parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let stream = futures::stream::iter(cids)
            .map(move |cid| {
                let ns = ns.clone();
                async move {
                    let data = ns.get(&cid).await.map_err(status)?;
                    Ok(pb::GetResponse {
                        cid: cid.to_string(),
                        found: data.is_some(),
                        data: data.map(|d| d.to_vec()).unwrap_or_default(),
                    })
                }
            })
            .buffered(8);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn has(&self, req: Request<pb::HasRequest>) -> Result<Response<pb::HasResponse>, Status> {
        let r = req.into_inner();
        let cid = parse(&r.cid)?;
        let has = self.ns(&r.namespace)?.has(&cid).await.map_err(status)?;
        Ok(Response::new(pb::HasResponse { has }))
    }

    async fn get_size(
        &self,
        req: Request<pb::GetSizeRequest>,
    ) -> Result<Response<pb::GetSizeResponse>, Status> {
        let r = req.into_inner();
        let cid = parse(&r.cid)?;
        match self
            .ns(&r.namespace)?
            .get_size(&cid)
            .await
            .map_err(status)?
        {
            Some(size) => Ok(Response::new(pb::GetSizeResponse { size })),
            None => Err(Status::not_found(format!("block {cid} is not stored"))),
        }
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.check_write(&req)?;
        let r = req.into_inner();
        let cid = parse(&r.cid)?;
        let deleted = self.ns(&r.namespace)?.delete(&cid).await.map_err(status)?;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    type ListStream = BoxStream<pb::ListResponse>;

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let stream = self.ns(&r.namespace)?.list_sized().map(|r| {
            r.map(|(mh, size)| pb::ListResponse {
                multihash: mh.to_bytes(),
                cid: cidutil::raw_cid(mh).to_string(),
                size,
            })
            .map_err(status)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
