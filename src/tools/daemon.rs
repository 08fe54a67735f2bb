//! The daemon: config → connector → store → surfaces, until a signal.

use std::future::Future;
use std::sync::Arc;

use crate::api::{self, ApiOptions, Listeners};
use crate::config::Config;
use crate::{Connector, GarageStore};

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// A joined store and its bound listeners, ready to serve.
pub struct Daemon {
    /// The store.
    pub store: Arc<GarageStore>,
    /// The listeners.
    pub listeners: Listeners,
    /// The surfaces' options.
    pub options: ApiOptions,
}

impl Daemon {
    /// Joins the cluster and binds the configured addresses.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let api_config = config.api.clone();
        let conn = Connector::connect(config).await?;
        let peer_key: [u8; 32] = conn
            .system
            .id
            .as_slice()
            .try_into()
            .expect("32-byte node id");
        let options = ApiOptions::from_config(&api_config, peer_key)?;
        if options.write_token.is_none() && !options.allow_anonymous_writes_on_loopback {
            tracing::warn!("no write token configured: the kubo RPC and gRPC are read-only");
        }
        let listeners = Listeners::bind(&api_config).await?;
        let store = GarageStore::with_filters(conn);
        // The served namespace exists from the start, so admin commands on
        // it work before the first write.
        store.create_namespace(&options.namespace).await?;
        Ok(Self {
            store,
            listeners,
            options,
        })
    }

    /// Serves until `shutdown` completes; requests in flight finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let conn = self.store.connector().clone();
        api::serve(self.listeners, self.store, self.options, shutdown).await?;
        conn.shutdown();
        Ok(())
    }
}
